"""Per-sample seeding (mmbeit/datasets/seeding.py), the MIMMask transform and the
training-step seed hook: reproducible, rank- and worker-independent randomness."""
import random
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmbeit.datasets import (
    MIMMask,
    SeededDataset,
    SeededSampler,
    UnlabeledImageFolder,
    derive_seed,
    derive_seeds,
)
from mmbeit.engine.hooks import IterationSeedHook

pytestmark = pytest.mark.usefixtures('one_thread')

M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser in Python integers (independent of numpy's wrapping)."""
    z = (x * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class Draws:
    """A toy dataset whose items are draws from the three global RNGs."""

    def __len__(self):
        return 5

    def __getitem__(self, index):
        return (index, torch.rand(1).item(), float(np.random.rand()), random.random())


def reseed(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def sampler_pairs(dataset, rank, world, epoch=0, seed=7, shuffle=True):
    with mock.patch('mmengine.dataset.sampler.get_dist_info', return_value=(rank, world)):
        sampler = SeededSampler(dataset, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_derive_seeds_equal_an_integer_computation():
    base = derive_seed(3, 4)
    assert 0 <= base <= M64 and base == derive_seed(3, 4) != derive_seed(4, 3)
    got = derive_seeds(3, 4, [0, 1, 2, 1000]).tolist()
    assert got == [splitmix64((base + p) & M64) for p in (0, 1, 2, 1000)]
    assert len(set(derive_seeds(0, 0, np.arange(10000)).tolist())) == 10000


def test_sampler_stream_does_not_depend_on_the_number_of_ranks():
    ds = SeededDataset(Draws())  # 5 samples: 2 ranks pad to 6
    one = sampler_pairs(ds, 0, 1)
    r0, r1 = sampler_pairs(ds, 0, 2), sampler_pairs(ds, 1, 2)
    # global position p goes to rank p % 2; the first 5 positions are world 1's stream
    merged = [pair for k in range(3) for pair in (r0[k], r1[k])]
    assert merged[:5] == one
    # the padding repeats an index but gets a seed of its own
    assert merged[5][0] == one[0][0] and merged[5][1] not in {s for _, s in one}
    assert sorted(i for i, _ in one) == [0, 1, 2, 3, 4]
    # same seed and epoch: same stream; another epoch or seed: other seeds
    assert sampler_pairs(ds, 0, 1) == one
    assert {s for _, s in sampler_pairs(ds, 0, 1, epoch=1)}.isdisjoint({s for _, s in one})
    assert {s for _, s in sampler_pairs(ds, 0, 1, seed=8)}.isdisjoint({s for _, s in one})


def test_dataset_seeds_each_sample_and_restores_the_callers_rngs():
    ds = SeededDataset(Draws())
    reseed(1)
    expected_next = (torch.rand(1).item(), float(np.random.rand()), random.random())
    reseed(1)
    a = ds[(2, 12345)]
    assert (torch.rand(1).item(), float(np.random.rand()), random.random()) == expected_next
    assert ds[(2, 12345)] == a and ds[(3, 12345)][1:] == a[1:]  # the seed decides the draws
    assert ds[(2, 12346)][1:] != a[1:]


def test_seeded_pair_errors():
    with pytest.raises(TypeError, match=r"SeededSampler needs its dataset wrapped in "
                       r"SeededDataset, got Draws: set train_dataloader.dataset = "):
        sampler_pairs(Draws(), 0, 1)
    with pytest.raises(TypeError, match=r"SeededDataset is indexed by the \(index, seed\) "
                       r"pairs of SeededSampler, got 3: set train_dataloader.sampler = "
                       r"dict\(type='mmbeit.SeededSampler'\)"):
        SeededDataset(Draws())[3]
    with pytest.raises(TypeError, match=r'SeededDataset got data_root: it only wraps a '
                       r'dataset. Set these on the wrapped dataset instead, e.g. '
                       r'train_dataloader.dataset.dataset.data_root'):
        SeededDataset(Draws(), data_root='x')


# ---------------------------------------------------------------------------------------
# the real pretraining pipeline through a DataLoader
# ---------------------------------------------------------------------------------------
PIPELINE = [
    dict(type='LoadImageRGB'),
    dict(type='BEiTMaskedViews', img_size=32, target_size=16, scale=(0.2, 1.0)),
    dict(type='MIMMask', patch_size=8,
         generator=dict(type='BlockwiseMaskGenerator', mask_ratio=0.4, min_num_patches=2)),
    dict(type='PackMIMInputs'),
]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('imgs')
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(
            root / f'{i:02d}.png')
    return root


def batches(folder, rank, world, workers, epoch=0, batch=2):
    ds = SeededDataset(UnlabeledImageFolder(data_root=str(folder), pipeline=PIPELINE))
    with mock.patch('mmengine.dataset.sampler.get_dist_info', return_value=(rank, world)):
        sampler = SeededSampler(ds, seed=0)
    sampler.set_epoch(epoch)
    from mmengine.dataset import default_collate
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=default_collate)
    return [b['inputs'] for b in loader]


def test_masks_and_views_independent_of_workers_and_ranks(folder):
    single = batches(folder, 0, 1, workers=0, batch=4)
    workers = batches(folder, 0, 1, workers=2, batch=4)
    for a, b in zip(single, workers):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    r0, r1 = batches(folder, 0, 2, workers=2), batches(folder, 1, 2, workers=0)
    for k, full in enumerate(single):  # batch k of world 1 = batch k of rank 0 and rank 1
        for entry in range(3):
            merged = torch.stack([r0[k][entry][0], r1[k][entry][0],
                                  r0[k][entry][1], r1[k][entry][1]])
            assert torch.equal(merged, full[entry])
    masks0 = torch.cat([b[2] for b in r0])
    masks1 = torch.cat([b[2] for b in r1])
    assert masks0.shape == (6, 16) and masks0.dtype == torch.bool
    assert (masks0.sum(1) == 6).all()  # round(0.4 * 16), exact blockwise
    assert not any(torch.equal(a, b) for a, b in zip(masks0, masks1))
    nxt = batches(folder, 0, 1, workers=0, batch=4, epoch=1)
    assert not torch.equal(nxt[0][2], single[0][2])


def test_mim_mask_transform_follows_the_view_and_checks_it():
    t = MIMMask(patch_size=4, generator=dict(type='RandomMaskGenerator', mask_ratio=0.5))
    np.random.seed(0)
    out = t(dict(img=np.zeros((8, 12, 3), np.uint8)))['mask']
    assert out.shape == (6,) and out.dtype == bool and out.sum() == 3
    np.random.seed(0)
    assert np.array_equal(t(dict(img=np.zeros((8, 12, 3), np.uint8)))['mask'], out)
    with pytest.raises(ValueError, match='MIMMask: view size 8x10 is not a multiple of '
                       'patch_size 4'):
        t(dict(img=np.zeros((8, 10, 3), np.uint8)))
    with pytest.raises(KeyError, match='put it after BEiTMaskedViews'):
        t(dict())
    with pytest.raises(ValueError, match='MIMMask: patch_size must be a positive int, got 0'):
        MIMMask(patch_size=0)


# ---------------------------------------------------------------------------------------
# training-step seeds
# ---------------------------------------------------------------------------------------
class FakeRunner:
    def __init__(self, seed, it):
        self.seed, self.iter = seed, it
        self.train_dataloader = None
        self.logger = mock.Mock()


def step_draws(rank, seed=5, it=3):
    hook = IterationSeedHook()
    runner = FakeRunner(seed, it)
    with mock.patch('mmbeit.engine.hooks.iteration_seed.get_rank', return_value=rank):
        hook.before_train(runner)
    torch.manual_seed(999)  # whatever happened before does not matter
    hook.before_train_iter(runner, 0)
    return torch.rand(4), np.random.rand(2)


def test_iteration_seed_hook_replays_per_iteration_and_differs_per_rank():
    t0, n0 = step_draws(rank=0)
    t0b, n0b = step_draws(rank=0)
    assert torch.equal(t0, t0b) and np.array_equal(n0, n0b)
    t1, _ = step_draws(rank=1)
    assert not torch.equal(t0, t1)
    assert not torch.equal(t0, step_draws(rank=0, it=4)[0])
    assert not torch.equal(t0, step_draws(rank=0, seed=6)[0])


def test_iteration_seed_hook_keeps_the_step_out_of_the_process_stream():
    hook = IterationSeedHook()
    runner = FakeRunner(5, 3)
    hook.before_train(runner)
    reseed(0)
    untouched = (torch.rand(3), np.random.rand(3), random.random())
    reseed(0)
    hook.before_train_iter(runner, 0)
    torch.rand(7)  # the step's draws
    np.random.rand(7)
    random.random()
    hook.after_train_iter(runner, 0)
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], untouched[0]) and np.array_equal(after[1], untouched[1])
    assert after[2] == untouched[2]
