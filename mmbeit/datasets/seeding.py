"""Per-sample randomness that does not depend on ranks, workers or interruptions.

mmengine seeds every rank alike and PyTorch gives each dataloader worker a seed derived
from the rank's RNG, so which crop, flip, jitter and mask a sample gets depends on how
many ranks and workers there are, ranks repeat each other's draws unless
``diff_rank_seed`` is set, and a resumed run draws differently from the run it
continues. Here every sample's randomness is a function of three numbers instead:

    (run seed, epoch, position of the sample in the epoch's global order)

:class:`SeededSampler` is mmengine's ``DefaultSampler`` (same shuffle, same split over
ranks, same padding) that yields ``(index, sample_seed)`` pairs; the position is global, so
two ranks never share a seed and padding duplicates get their own. :class:`SeededDataset`
wraps any dataset and, for each pair, seeds the global RNGs the transforms draw from
(torch's CPU generator, numpy's, Python's ``random``) before running the wrapped
dataset's ``__getitem__``, and puts the caller's RNG state back afterwards (so a
``num_workers=0`` run does not disturb the training process). The same seed therefore
gives the same samples whatever the number of ranks or workers, and a run resumed at
epoch ``e`` draws exactly what the uninterrupted run drew. Nothing needs to be stored in
checkpoints beyond the seed, which mmengine already keeps.

The two belong together and check each other: the sampler refuses another dataset and
the dataset refuses plain indices, each error naming the missing half. Config::

    train_dataloader = dict(
        sampler=dict(type='mmbeit.SeededSampler', shuffle=True),
        dataset=dict(type='mmbeit.SeededDataset', dataset=dict(type=..., pipeline=...)))

The training process's own draws (drop path) are seeded per iteration and rank by
:class:`~mmbeit.engine.hooks.IterationSeedHook`.
"""
import random
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dataset import DefaultSampler

from mmbeit.registry import DATA_SAMPLERS, DATASETS

__all__ = ['SeededSampler', 'SeededDataset', 'derive_seed', 'derive_seeds', 'seed_global_rngs',
           'get_global_rng_state', 'set_global_rng_state']

_MASK64 = (1 << 64) - 1


def derive_seed(*values: int) -> int:
    """A 64-bit seed mixed from non-negative ints (numpy's ``SeedSequence``)."""
    lo, hi = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return (int(hi) << 32) | int(lo)


def derive_seeds(seed: int, epoch: int, positions: Sequence[int]) -> np.ndarray:
    """uint64 seeds of the samples at ``positions`` of epoch ``epoch`` (vectorised).

    ``derive_seed(seed, epoch)`` plus the position, passed through the splitmix64 finaliser,
    so neighbouring positions get unrelated seeds.
    """
    base = np.uint64(derive_seed(seed, epoch))
    z = np.asarray(positions, dtype=np.uint64) + base
    z = z * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64, as intended
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seed_global_rngs(seed: int, cuda: bool = False) -> None:
    """Seed torch's CPU generator (and CUDA's when ``cuda``), numpy's and ``random``."""
    seed = int(seed) & _MASK64
    if cuda:
        torch.manual_seed(seed)  # CPU and every CUDA device
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    random.seed(seed)


def get_global_rng_state() -> tuple:
    """The state of the RNGs :func:`seed_global_rngs` seeds (torch CPU, numpy, random)."""
    return torch.default_generator.get_state(), np.random.get_state(), random.getstate()


def set_global_rng_state(state: tuple) -> None:
    """Put back a state taken by :func:`get_global_rng_state`."""
    torch_state, np_state, py_state = state
    torch.default_generator.set_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


@DATA_SAMPLERS.register_module()
class SeededSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` yielding ``(index, sample_seed)`` pairs.

    Order, rank split and padding are ``DefaultSampler``'s: shuffled with ``seed + epoch``,
    rank ``r`` of ``W`` takes global positions ``r, r + W, ...``. The sample seed is
    :func:`derive_seeds` of (seed, epoch, global position). ``seed`` is the run's seed
    (the Runner passes it); mmengine's ``DistSamplerSeedHook`` sets the epoch.

    Args:
        dataset (SeededDataset): the wrapped training dataset.
        shuffle (bool): shuffle every epoch. Defaults to True.
        seed (int, optional): the run's seed; None draws one shared by all ranks.
        round_up (bool): pad so every rank gets as many samples. Defaults to True.
    """

    def __init__(self, dataset, shuffle: bool = True, seed: Optional[int] = None,
                 round_up: bool = True) -> None:
        if not isinstance(dataset, SeededDataset):
            raise TypeError(
                f'SeededSampler needs its dataset wrapped in SeededDataset, got '
                f'{type(dataset).__name__}: set train_dataloader.dataset = '
                f"dict(type='mmbeit.SeededDataset', dataset=<the dataset config>)")
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(super().__iter__())
        positions = np.arange(self.rank, self.rank + len(indices) * self.world_size,
                              self.world_size)
        seeds = derive_seeds(self.seed, self.epoch, positions).tolist()
        return iter(list(zip(indices, seeds)))


@DATASETS.register_module()
class SeededDataset:
    """Run a dataset's ``__getitem__`` with the global RNGs seeded for each sample.

    Indexed by the ``(index, sample_seed)`` pairs of :class:`SeededSampler`. Length,
    ``metainfo`` and ``full_init`` are the wrapped dataset's.

    Args:
        dataset (dict | Dataset): the dataset, or its config (built from mmbeit's
            ``DATASETS``; use a scope prefix such as ``mmpretrain.ImageNet``).
    """

    def __init__(self, dataset: Union[dict, Any], **unexpected) -> None:
        if unexpected:
            keys = ', '.join(sorted(unexpected))
            first = sorted(unexpected)[0]
            raise TypeError(
                f'SeededDataset got {keys}: it only wraps a dataset. Set these on the '
                f'wrapped dataset instead, e.g. train_dataloader.dataset.dataset.{first}')
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset

    @property
    def metainfo(self) -> dict:
        return getattr(self.dataset, 'metainfo', {})

    def full_init(self) -> None:
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(
                f'SeededDataset is indexed by the (index, seed) pairs of SeededSampler, got '
                f"{key!r}: set train_dataloader.sampler = dict(type='mmbeit.SeededSampler')")
        index, seed = key
        state = get_global_rng_state()
        try:
            seed_global_rngs(seed)
            return self.dataset[index]
        finally:
            set_global_rng_state(state)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(dataset={type(self.dataset).__name__}, len={len(self)})'
