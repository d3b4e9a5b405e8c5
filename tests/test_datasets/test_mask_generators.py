"""Tests for mmbeit/datasets/transforms/mask_generators.py: BEiT's blockwise masking
(BEiT paper Algorithm 1; v1 ``exact=False`` / v2 ``exact=True``) and uniform random
masking.

Statistical checks use a fixed seed, so they are deterministic; their bands are still set
from the binomial standard error so that a correct generator would pass for any seed.
The reference distribution is a plain re-implementation of the paper's pseudo-code written
here with Python's ``random`` module, never the code under test."""
import math
import random

import numpy as np
import pytest
import torch

from mmbeit.datasets.transforms import BlockwiseMaskGenerator, RandomMaskGenerator
from mmbeit.registry import TASK_UTILS

# One intra-op thread (tests/conftest.py): tiny ops run faster so, also on a busy machine.
pytestmark = pytest.mark.usefixtures('one_thread')


def draw(gen, n, grid, seed=0):
    np.random.seed(seed)
    return gen(n, grid)


def rect_mask(shape, rects):
    out = np.zeros(shape, dtype=bool)
    for top, left, h, w in rects:
        out[top:top + h, left:left + w] = True
    return out


def record_blocks(gen, monkeypatch):
    """Wrap ``gen._place_block``; returns the list it appends (budget, new, rect) to."""
    calls = []
    original = gen._place_block

    def recorder(mask, budget):
        new, rect = original(mask, budget)
        calls.append((budget, new, rect))
        return new, rect

    monkeypatch.setattr(gen, '_place_block', recorder)
    return calls


def aspect_consistent(h, w, lo, hi):
    """Whether some real (a, b) with round(a) = h, round(b) = w has a / b in [lo, hi].

    h = round(sqrt(s*r)) and w = round(sqrt(s/r)) are each within 0.5 of the real side,
    so the ratio r = a / b lies in [(h - 0.5) / (w + 0.5), (h + 0.5) / (w - 0.5)]; that
    interval must meet [lo, hi]. (h, w >= 1 for every accepted block.)"""
    return (h - 0.5) / (w + 0.5) <= hi and (h + 0.5) / (w - 0.5) >= lo


# ---------------------------------------------------------------------------------------
# target count, shape, dtype
# ---------------------------------------------------------------------------------------

def test_v2_exact_75_at_14x14():
    gen = BlockwiseMaskGenerator()  # defaults: ratio 75/196, min 16, aspect 0.3, exact
    assert gen.num_masked((14, 14)) == 75
    masks = draw(gen, 2000, (14, 14))
    assert masks.dtype == torch.bool and masks.shape == (2000, 196)
    assert (masks.sum(1) == 75).all()
    # independent samples: 2000 draws give (almost) 2000 different masks
    assert len({m.numpy().tobytes() for m in masks}) > 1990


@pytest.mark.parametrize('kwargs,grid,expected', [
    (dict(mask_ratio=0.4, min_num_patches=4), (8, 8), 26),          # round(25.6)
    (dict(), (16, 16), 98),                                          # round(75/196 * 256)
    (dict(mask_ratio=0.5), (12, 16), 96),
    (dict(mask_ratio=1.0), (8, 8), 64),                              # whole grid
    (dict(num_masking_patches=75), (16, 16), 75),                    # fixed, ignores grid
    (dict(num_masking_patches=100, max_num_patches=40), (14, 14), 100),
])
def test_count_on_other_grids(kwargs, grid, expected):
    h, w = grid
    v2 = BlockwiseMaskGenerator(**kwargs)
    v1 = BlockwiseMaskGenerator(exact=False, **kwargs)
    assert v2.num_masked(grid) == v1.num_masked(grid) == expected
    masks = draw(v2, 300, grid)
    assert masks.dtype == torch.bool and masks.shape == (300, h * w)
    assert (masks.sum(1) == expected).all()
    counts = draw(v1, 300, grid).sum(1)
    assert (counts <= expected).all()
    # v1 falls a little short on average (observed means: 25.98, 97.45, 95.54, 60.97,
    # 74.32, 99.61 of 26, 98, 96, 64, 75, 100). With the whole 8x8 grid as target even an
    # empty mask happens (2 of 300): a first block of area U(16, 64) with both sides < 8
    # can fail all 10 attempts; unilm behaves the same.
    assert counts.double().mean() >= 0.9 * expected


def test_empty_batch():
    masks = BlockwiseMaskGenerator()(0, (14, 14))
    assert masks.dtype == torch.bool and masks.shape == (0, 196)


def test_v1_count_never_above_target_and_mean():
    gen = BlockwiseMaskGenerator(exact=False)
    counts = draw(gen, 2000, (14, 14)).sum(1).double()
    assert counts.max() <= 75
    # Observed (20000 draws, seeds 0-2): mean 74.47-74.48, std 0.97, a third of the draws
    # short of 75, minimum 64. With 2000 draws the standard error of the mean is ~0.02, so
    # [74.0, 74.9] is a >20-sigma band around the observed value; a generator that always
    # reaches 75 (mmpretrain's loop) or gives up too early (e.g. 1 attempt per block,
    # exclusive bounds) falls outside it.
    assert 74.0 <= counts.mean() <= 74.9
    short = (counts < 75).double().mean()
    assert 0.2 <= short <= 0.5


# ---------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('grid', [(14, 14), (12, 16)])
def test_single_block_shape(grid):
    H, W = grid
    gen = BlockwiseMaskGenerator()  # min 16, aspect [0.3, 10/3]
    np.random.seed(0)
    ratios = []
    for _ in range(3000):
        mask = np.zeros(grid, dtype=bool)
        new, rect = gen._place_block(mask, 75)
        assert new > 0, 'an empty grid always takes a block within 10 attempts'
        top, left, h, w = rect
        assert 1 <= h < H and 1 <= w < W  # strictly smaller than the grid
        assert 0 <= top <= H - h and 0 <= left <= W - w
        # the mask is exactly this one rectangle: its bounding box is fully masked
        assert (mask == rect_mask(grid, [rect])).all()
        assert new == h * w <= 75
        assert aspect_consistent(h, w, 0.3, 1 / 0.3), rect
        # area s >= 16 before rounding; each side rounds by at most 0.5. The unrounded
        # product is not a lower bound: s = 16, r = 10/3 gives 7 x 2 = 14.
        assert (h + 0.5) * (w + 0.5) >= 16
        ratios.append(h / w)
    # the log-uniform aspect reaches both ends of its range
    assert min(ratios) <= 0.4 and max(ratios) >= 2.5
    if H == W:
        # log-uniform on [0.3, 1/0.3] is symmetric in log r, so on a square grid tall and
        # wide blocks are equally likely (a plain uniform r would make ~77% of them tall)
        tall = sum(r > 1 for r in ratios)
        wide = sum(r < 1 for r in ratios)
        assert abs(tall - wide) <= 5 * math.sqrt(tall + wide)


def test_block_budget_smaller_than_min_area():
    gen = BlockwiseMaskGenerator(min_num_patches=16)
    np.random.seed(1)
    accepted = 0
    for _ in range(500):
        mask = np.zeros((14, 14), dtype=bool)
        new, rect = gen._place_block(mask, 5)
        if new:
            accepted += 1
            assert new == rect[2] * rect[3] <= 5
            assert mask.sum() == new
        else:
            assert rect is None and not mask.any()
    assert accepted > 50  # areas drawn from U(5, 16) often round to <= 5 cells


def test_fixed_aspect_gives_squares():
    gen = BlockwiseMaskGenerator(min_aspect=1.0, max_aspect=1.0, exact=False)
    np.random.seed(2)
    for _ in range(300):
        mask = np.zeros((14, 14), dtype=bool)
        new, (top, left, h, w) = gen._place_block(mask, 75)
        assert h == w and 4 <= h <= 9  # round(sqrt(s)) for s in [16, 75]


def test_block_rejected_when_no_new_cells_fit():
    gen = BlockwiseMaskGenerator(min_num_patches=1)
    mask = np.ones((14, 14), dtype=bool)  # everything already masked: new == 0 always
    np.random.seed(0)
    assert gen._place_block(mask, 10) == (0, None)
    assert mask.all()


@pytest.mark.parametrize('max_num_patches', [None, 30])
def test_v1_mask_is_union_of_accepted_blocks(monkeypatch, max_num_patches):
    gen = BlockwiseMaskGenerator(exact=False, max_num_patches=max_num_patches)
    calls = record_blocks(gen, monkeypatch)
    np.random.seed(3)
    saw_overlap = False
    for _ in range(300):
        calls.clear()
        mask = gen(1, (14, 14))[0].view(14, 14).numpy()
        rects = [rect for _, new, rect in calls if new]
        assert (mask == rect_mask((14, 14), rects)).all()
        # the loop: budget = min(remaining, max); stop at the target or at a failed block
        done = 0
        for i, (budget, new, _) in enumerate(calls):
            assert budget == min(75 - done, max_num_patches or 75)
            assert 0 <= new <= budget
            if new == 0:
                assert i == len(calls) - 1
            done += new
        assert done == mask.sum()
        assert done == 75 or calls[-1][1] == 0
        saw_overlap |= sum(r[2] * r[3] for r in rects) > done
    assert saw_overlap  # overlapping blocks count only their new cells


def test_v2_tops_up_the_union_of_blocks(monkeypatch):
    gen = BlockwiseMaskGenerator(exact=True)
    calls = record_blocks(gen, monkeypatch)
    np.random.seed(4)
    topped_up = 0
    for _ in range(300):
        calls.clear()
        mask = gen(1, (14, 14))[0].view(14, 14).numpy()
        blocks = rect_mask((14, 14), [rect for _, new, rect in calls if new])
        assert mask.sum() == 75
        assert (mask >= blocks).all()  # blocks kept, only single cells added
        topped_up += mask.sum() > blocks.sum()
    assert topped_up > 30  # about a third of the draws need the top-up


# ---------------------------------------------------------------------------------------
# per-position frequency
# ---------------------------------------------------------------------------------------

def test_every_position_masked_14x14():
    n = 4000
    freq = draw(BlockwiseMaskGenerator(exact=False), n, (14, 14)).double().mean(0).view(14, 14)
    # Observed: corners ~0.04, centre ~0.72. With exclusive randint bounds (mmpretrain)
    # the last row and column would never be masked with exact=False. Standard error at
    # p = 0.04 over 4000 draws is 0.003, so 0.02 is > 6 sigma below the corners.
    assert freq.min() > 0.02
    for corner in (freq[0, 0], freq[0, -1], freq[-1, 0], freq[-1, -1]):
        assert corner > 0.02
    # the distribution is symmetric under flips: compare within 5 binomial sigmas
    # (2 * p(1-p) / n variance of a difference of two frequencies)
    for flipped in (freq.flip(0), freq.flip(1), freq.t()):
        sigma = torch.sqrt(2 * freq * (1 - freq) / n).clamp_min(1e-3)
        assert ((freq - flipped).abs() <= 5 * sigma).all()


@pytest.mark.parametrize('kwargs,grid', [
    (dict(exact=False), (12, 16)),
    (dict(exact=False, min_num_patches=4, mask_ratio=0.4), (8, 8)),
    (dict(exact=False), (16, 16)),
])
def test_every_position_masked_other_grids(kwargs, grid):
    freq = draw(BlockwiseMaskGenerator(**kwargs), 2000, grid).double().mean(0)
    assert freq.min() > 0.01
    assert freq.view(grid)[-1, -1] > 0.01 and freq.view(grid)[0, 0] > 0.01


def reference_blockwise(H, W, count, min_area, rng):
    """BEiT paper Algorithm 1 as unilm beit/masking_generator.py implements it
    (docs/method.md "Masking"), v1 (no top-up), with Python's random module."""
    log_lo, log_hi = math.log(0.3), math.log(1 / 0.3)
    mask = np.zeros((H, W), dtype=bool)
    total = 0
    while total < count:
        budget = count - total
        added = 0
        for _ in range(10):
            s = rng.uniform(min_area, budget)
            r = math.exp(rng.uniform(log_lo, log_hi))
            h, w = round(math.sqrt(s * r)), round(math.sqrt(s / r))
            if h < H and w < W:
                y, x = rng.randint(0, H - h), rng.randint(0, W - w)  # inclusive
                fresh = h * w - int(mask[y:y + h, x:x + w].sum())
                if 0 < fresh <= budget:
                    mask[y:y + h, x:x + w] = True
                    added = fresh
                    break
        if added == 0:
            break
        total += added
    return mask


def test_matches_reference_distribution():
    n = 3000
    ours = draw(BlockwiseMaskGenerator(exact=False), n, (14, 14)).double()
    rng = random.Random(0)
    ref = torch.from_numpy(np.stack(
        [reference_blockwise(14, 14, 75, 16, rng).reshape(-1) for _ in range(n)])).double()
    # mean counts: std ~1 per draw, so the difference of means has sigma ~0.026
    assert abs(ours.sum(1).mean() - ref.sum(1).mean()) < 0.15
    f_ours, f_ref = ours.mean(0), ref.mean(0)
    p = (f_ours + f_ref) / 2
    sigma = torch.sqrt(2 * p * (1 - p) / n)
    assert ((f_ours - f_ref).abs() <= 5 * sigma).all()


# ---------------------------------------------------------------------------------------
# randomness
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('cls', [BlockwiseMaskGenerator, RandomMaskGenerator])
def test_reproducible_with_numpy_seed(cls):
    gen = cls()
    a = draw(gen, 8, (14, 14), seed=0)
    b = draw(gen, 8, (14, 14), seed=0)
    c = draw(gen, 8, (14, 14), seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # samples are drawn one after the other: a batch equals single draws in sequence
    np.random.seed(0)
    singles = torch.cat([gen(1, (14, 14)) for _ in range(8)])
    assert torch.equal(a, singles)
    # mmengine's seeding (what `randomness=dict(seed=...)` calls) reaches it
    from mmengine.runner import set_random_seed
    set_random_seed(5)
    d = gen(8, (14, 14))
    set_random_seed(5)
    assert torch.equal(d, gen(8, (14, 14)))


def test_python_and_torch_rng_untouched():
    random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), torch.rand(3))
    random.seed(7)
    torch.manual_seed(7)
    BlockwiseMaskGenerator(exact=True)(16, (14, 14))
    RandomMaskGenerator()(16, (14, 14))
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(3), expected[1])


# ---------------------------------------------------------------------------------------
# RandomMaskGenerator
# ---------------------------------------------------------------------------------------

def test_random_generator_count_and_uniformity():
    gen = RandomMaskGenerator()  # ratio 0.4
    assert gen.num_masked((14, 14)) == 78  # round(78.4)
    n = 4000
    masks = draw(gen, n, (14, 14))
    assert masks.dtype == torch.bool and masks.shape == (n, 196)
    assert (masks.sum(1) == 78).all()
    freq = masks.double().mean(0)
    p = 78 / 196
    sigma = math.sqrt(p * (1 - p) / n)  # ~0.0077
    assert ((freq - p).abs() <= 5 * sigma).all()
    assert len({m.numpy().tobytes() for m in masks}) == n


def test_random_generator_fixed_count():
    gen = RandomMaskGenerator(num_masking_patches=10)
    masks = draw(gen, 200, (12, 16))
    assert masks.shape == (200, 192) and (masks.sum(1) == 10).all()
    assert (draw(RandomMaskGenerator(mask_ratio=1.0), 3, (4, 5))).all()


# ---------------------------------------------------------------------------------------
# arguments and registry
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('cls,kwargs,message', [
    (BlockwiseMaskGenerator, dict(mask_ratio=0.4, num_masking_patches=75),
     'give either mask_ratio or num_masking_patches, not both '
     '(got mask_ratio=0.4, num_masking_patches=75)'),
    (RandomMaskGenerator, dict(mask_ratio=0.5, num_masking_patches=10),
     'give either mask_ratio or num_masking_patches, not both '
     '(got mask_ratio=0.5, num_masking_patches=10)'),
    (BlockwiseMaskGenerator, dict(mask_ratio=0), 'mask_ratio must be in (0, 1], got 0'),
    (RandomMaskGenerator, dict(mask_ratio=1.5), 'mask_ratio must be in (0, 1], got 1.5'),
    (BlockwiseMaskGenerator, dict(num_masking_patches=0),
     'num_masking_patches must be an int >= 1, got 0'),
    (BlockwiseMaskGenerator, dict(num_masking_patches=7.5),
     'num_masking_patches must be an int >= 1, got 7.5'),
    (BlockwiseMaskGenerator, dict(min_num_patches=0),
     'min_num_patches must be an int >= 1, got 0'),
    (BlockwiseMaskGenerator, dict(max_num_patches=8),
     'max_num_patches must be None or an int >= min_num_patches (16), got 8'),
    (BlockwiseMaskGenerator, dict(min_aspect=0),
     'min_aspect must be a number > 0, got 0'),
    (BlockwiseMaskGenerator, dict(min_aspect=-0.3),
     'min_aspect must be a number > 0, got -0.3'),
    (BlockwiseMaskGenerator, dict(min_aspect=0.5, max_aspect=0.4),
     'max_aspect must be a number >= min_aspect (0.5), got 0.4'),
    (BlockwiseMaskGenerator, dict(exact=1), 'exact must be a bool, got 1'),
])
def test_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert str(err.value) == message


@pytest.mark.parametrize('cls', [BlockwiseMaskGenerator, RandomMaskGenerator])
def test_bad_call_arguments(cls):
    gen = cls(num_masking_patches=200)
    message = 'num_masking_patches=200 exceeds the 196 patches of the 14x14 grid'
    for call in (lambda: gen.num_masked((14, 14)), lambda: gen(2, (14, 14))):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message
    assert gen.num_masked([16, 16]) == 200  # fits a larger grid; lists are accepted
    with pytest.raises(ValueError) as err:
        gen(2, (0, 14))
    assert str(err.value) == 'grid must be a pair of positive ints (h, w), got (0, 14)'
    with pytest.raises(ValueError) as err:
        gen(2, 14)
    assert str(err.value) == 'grid must be a pair of positive ints (h, w), got 14'
    with pytest.raises(ValueError) as err:
        gen(-1, (16, 16))
    assert str(err.value) == 'batch_size must be an int >= 0, got -1'


def test_registry_build():
    gen = TASK_UTILS.build(dict(type='BlockwiseMaskGenerator', num_masking_patches=75,
                                min_num_patches=16, max_num_patches=75, exact=False))
    assert type(gen) is BlockwiseMaskGenerator
    assert (gen.num_masking_patches, gen.min_num_patches, gen.max_num_patches) == (75, 16, 75)
    assert gen.exact is False and gen.max_aspect == pytest.approx(1 / 0.3)
    rnd = TASK_UTILS.build(dict(type='RandomMaskGenerator', mask_ratio=0.6))
    assert type(rnd) is RandomMaskGenerator and rnd.num_masked((10, 10)) == 60
    assert TASK_UTILS.get('BlockwiseMaskGenerator') is BlockwiseMaskGenerator
