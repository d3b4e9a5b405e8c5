"""The recipe's learning rate for any number of processes: linear lr scaling by default.

A recipe states its lr for one total batch: BEiT and BEiT v2 pretrain with AdamW at 1.5e-3
for a batch of 2048 (BEiT paper, Table 12; unilm ``beit2/PRETRAINING.md``: 16 GPUs x 128).
A config says so with ``auto_scale_lr = dict(base_batch_size=2048)``. A run with another
total batch keeps the recipe's lr per image when the lr follows the batch linearly
(Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 2.1):

    total = world size x train_dataloader.batch_size x optim_wrapper.accumulative_counts
    lr    = config lr x total / base_batch_size

mmengine applies this only when ``auto_scale_lr.enable=True`` (off by default), leaves out
gradient accumulation, and leaves absolute lr floors (``eta_min`` of ``CosineAnnealingLR``)
unscaled. Here it is on whenever the config has ``base_batch_size`` and not
``enable=False``; :func:`scale_lr_in_config` rewrites the config *before* the Runner is
built (so the config dumped in the work dir holds the lr actually used) and sets
``enable=False`` so that mmengine does not scale a second time. The written config
records what was done in ``auto_scale_lr.applied``, and running that dumped config again
keeps its lr.

:func:`scale_lr_in_config` returns the one line every training run logs, e.g.::

    total batch 8 x 128 x 2 = 2048; lr 1.5e-03 = 1.5e-03 x 2048 / 2048 (linear scaling
    from auto_scale_lr.base_batch_size=2048)
"""
import os
from typing import Mapping, Optional

import numpy as np

__all__ = ['world_size_from_env', 'total_batch', 'scale_lr_in_config', 'format_lr']

# Absolute lr values a parameter scheduler may carry (mmengine's LR schedulers): they are
# learning rates like optimizer.lr and move with it. Factors and ratios
# (start_factor, eta_min_ratio, gamma, ...) need nothing.
ABSOLUTE_LR_KEYS = ('eta_min', 'eta_max', 'min_value')


def format_lr(value: float) -> str:
    """Shortest scientific form that reads back as ``value``: 1.5e-03, 7.5e-04, 1e-03."""
    return np.format_float_scientific(float(value), trim='-', exp_digits=2)


def world_size_from_env(launcher: str, environ: Mapping[str, str] = os.environ) -> int:
    """The number of training processes the launcher starts (before any process group
    exists): ``WORLD_SIZE`` from torchrun, ``SLURM_NTASKS`` from srun, 1 without one."""
    if launcher == 'none':
        return 1
    key = {'pytorch': 'WORLD_SIZE', 'slurm': 'SLURM_NTASKS'}.get(launcher)
    if key is None:
        raise ValueError(f"launcher {launcher!r}: the world size is read for 'none', "
                         f"'pytorch' and 'slurm' only")
    value = environ.get(key)
    if value is None or not value.strip().isdigit() or int(value) < 1:
        how = 'tools/dist_train.sh (torchrun)' if launcher == 'pytorch' else 'srun'
        raise RuntimeError(f'--launcher {launcher} but {key}={value!r} is not a positive '
                           f'number of processes: start the run with {how}')
    return int(value)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


def total_batch(cfg, world_size: int) -> tuple:
    """``(per_process, accumulation, total)`` of a training config on ``world_size``
    processes: ``train_dataloader.batch_size``, ``optim_wrapper.accumulative_counts``
    (default 1) and their product with ``world_size``."""
    loader = cfg.get('train_dataloader') or {}
    if loader.get('batch_size') is None:
        raise ValueError('train_dataloader.batch_size is not set: the total batch (and the lr '
                         'scaled from it) needs the per-process batch size in the config')
    per_process = _positive_int(loader['batch_size'], 'train_dataloader.batch_size')
    accumulation = _positive_int((cfg.get('optim_wrapper') or {}).get('accumulative_counts', 1),
                                 'optim_wrapper.accumulative_counts')
    world_size = _positive_int(world_size, 'world size')
    return per_process, accumulation, world_size * per_process * accumulation


def _optimizers(optim_wrapper) -> list:
    """(path, optimizer cfg) of each optimizer: one, or one per wrapper of a dict of
    wrappers (``optim_wrapper = dict(constructor=..., generator=dict(optimizer=...))``)."""
    if not optim_wrapper:
        return []
    if 'optimizer' in optim_wrapper:
        return [('optim_wrapper.optimizer', optim_wrapper['optimizer'])]
    return [(f'optim_wrapper.{k}.optimizer', v['optimizer']) for k, v in optim_wrapper.items()
            if isinstance(v, Mapping) and 'optimizer' in v]


def _is_lr_scheduler(scheduler: Mapping) -> bool:
    kind = scheduler.get('type', '')
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    kind = kind.split('.')[-1].split('::')[-1]
    if kind.endswith('LR'):
        return True
    # generic schedulers (CosineAnnealingParamScheduler, ...) name what they move
    return kind.endswith('ParamScheduler') and scheduler.get('param_name') == 'lr'


def _schedulers(param_scheduler) -> list:
    if param_scheduler is None:
        return []
    if isinstance(param_scheduler, Mapping):
        if 'type' in param_scheduler:
            return [param_scheduler]
        # one list per optimizer of a dict of wrappers
        return [s for v in param_scheduler.values() for s in _schedulers(v)]
    return [s for s in param_scheduler if isinstance(s, Mapping)]


def _batch_text(world_size: int, per_process: int, accumulation: int, total: int) -> str:
    acc = f' x {accumulation}' if accumulation > 1 else ''
    return f'total batch {world_size} x {per_process}{acc} = {total}'


def scale_lr_in_config(cfg, world_size: int, off_by: Optional[str] = None) -> str:
    """Scale every lr of the training config ``cfg`` (in place) to its total batch and
    return the line that says what was done.

    Args:
        cfg (Config): the training config; changed in place.
        world_size (int): number of training processes (all nodes).
        off_by (str, optional): why scaling is off although the config asks for it (a
            command-line flag such as ``'--no-scale-lr'``). Defaults to None.

    Returns:
        str: ``total batch N x b [x K] = T; lr ...`` with the lr used and where it came
        from.
    """
    per_process, accumulation, total = total_batch(cfg, world_size)
    batch = _batch_text(world_size, per_process, accumulation, total)
    optimizers = _optimizers(cfg.get('optim_wrapper'))
    lrs = [opt.get('lr') for _, opt in optimizers]
    lr_text = 'lr ' + (', '.join(format_lr(lr) for lr in lrs if lr is not None)
                       if any(lr is not None for lr in lrs) else '(not set in the config)')

    auto = cfg.get('auto_scale_lr')
    base = auto.get('base_batch_size') if auto else None
    enable = auto.get('enable') if auto else None
    if base is None:
        if enable:
            raise ValueError('auto_scale_lr.enable=True but auto_scale_lr has no '
                             'base_batch_size: add the total batch the config lr is meant '
                             'for, e.g. auto_scale_lr = dict(base_batch_size=2048)')
        return f'{batch}; {lr_text} as in the config (no auto_scale_lr.base_batch_size)'
    base = _positive_int(base, 'auto_scale_lr.base_batch_size')
    if off_by is not None:
        auto['enable'] = False
        return f'{batch}; {lr_text} as in the config (scaling turned off by {off_by})'
    if enable is not None and not enable:
        if auto.get('applied'):
            return (f'{batch}; {lr_text} as in the config (auto_scale_lr.enable=False; '
                    f'already scaled by an earlier run: {auto["applied"]})')
        return (f'{batch}; {lr_text} as in the config (scaling turned off by '
                f'auto_scale_lr.enable=False)')

    ratio = total / base
    shown = []
    for path, opt in optimizers:
        if opt.get('lr') is None:
            raise ValueError(f'auto_scale_lr asks for linear lr scaling but {path}.lr is not '
                             f'set; give the lr for base_batch_size={base}')
        old = float(opt['lr'])
        opt['lr'] = old * ratio
        shown.append(f'{format_lr(opt["lr"])} = {format_lr(old)} x {total} / {base}')
    floors = []
    for sched in _schedulers(cfg.get('param_scheduler')):
        if not _is_lr_scheduler(sched):
            continue
        for key in ABSOLUTE_LR_KEYS:
            if sched.get(key):   # None and 0 stay as they are
                old = float(sched[key])
                sched[key] = old * ratio
                floors.append(f'{sched["type"]}.{key} {format_lr(old)} -> '
                              f'{format_lr(sched[key])}')
    line = (f'{batch}; lr {", ".join(shown)} (linear scaling from '
            f'auto_scale_lr.base_batch_size={base}')
    line += f'; also {", ".join(floors)})' if floors else ')'
    auto['enable'] = False   # done here: mmengine's Runner must not scale again
    auto['applied'] = (f'lr x {total} / {base}, {world_size} processes x {per_process} x '
                       f'{accumulation} accumulated (mmbeit; enable=False keeps mmengine '
                       f'from scaling again)')
    return line
