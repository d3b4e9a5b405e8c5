"""Seed the training process's RNGs for every iteration from (run seed, iteration, rank).

The randomness of the training step itself (drop path, dropout, mixup in a data
preprocessor) comes from the global RNGs of each rank's process. mmengine seeds them once
per run, and alike on every rank unless ``diff_rank_seed`` is set, so all ranks drop the
same paths, and a resumed run continues from a fresh seed instead of the RNG state the
interrupted run had reached. :class:`IterationSeedHook` reseeds torch (CPU and CUDA),
numpy and ``random`` before every training iteration with a seed derived from (run seed,
global iteration, rank): ranks differ, and a resumed run replays exactly the draws of the
uninterrupted one, with no RNG state stored in checkpoints. After the iteration the
process's previous RNG state is put back, so the step's draws never leak into data loaded
in the training process. Host-side calls only; no device synchronisation.

It also hands a resumed run's seed to :class:`~mmbeit.datasets.SeededSampler`, which was
built before the checkpoint was read.
"""
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mmbeit.datasets.seeding import (
    SeededSampler,
    derive_seed,
    get_global_rng_state,
    seed_global_rngs,
    set_global_rng_state,
)
from mmbeit.registry import HOOKS

__all__ = ['IterationSeedHook']


@HOOKS.register_module()
class IterationSeedHook(Hook):
    """Reseed the global RNGs before every training iteration (see the module doc)."""

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._rank = 0
        self._saved = None

    def before_train(self, runner) -> None:
        self._rank = get_rank()
        sampler = getattr(runner.train_dataloader, 'sampler', None)
        if isinstance(sampler, SeededSampler) and sampler.seed != runner.seed:
            sampler.seed = runner.seed  # the seed of the resumed checkpoint
        runner.logger.info(
            f'randomness: run seed {runner.seed}; training-step RNGs reseeded every '
            f'iteration from (seed, iteration, rank {self._rank})' +
            ('; samples seeded from (seed, epoch, position) by SeededSampler'
             if isinstance(sampler, SeededSampler) else
             '; the train sampler is not a SeededSampler, so data randomness depends on '
             'ranks and workers'))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # the process's own stream is put back after the step, so that data loaded in
        # this process (num_workers=0, datasets without SeededDataset) draws what it
        # would draw without the hook, and the dataloader replay of a resumed
        # iteration-based run meets the same stream as the uninterrupted run
        self._saved = get_global_rng_state()
        seed_global_rngs(derive_seed(runner.seed, runner.iter, self._rank), cuda=True)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if self._saved is not None:
            set_global_rng_state(self._saved)
            self._saved = None
