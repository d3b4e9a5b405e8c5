"""Train a model from a config: ``python tools/train.py CONFIG [options]``.

The flags are the usual OpenMMLab ones; see ``--help``. Multi-process runs go through
``tools/dist_train.sh CONFIG N`` (torchrun; NCCL on GPUs, gloo on CPU machines) or
``tools/slurm_train.sh``.
"""
import argparse
import os.path as osp
import sys
from typing import Optional

from mmengine.config import Config
from mmengine.logging import print_log

from mmbeit.checkpoint import CheckpointError
from mmbeit.engine.config_checks import UnknownConfigKeyError
from mmbeit.engine.runtime import add_config_args, check_work_dir, load_config, parse_tool_args, run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model with mmbeit')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto', metavar='CKPT',
                        help='resume from CKPT, or without a value from the latest checkpoint '
                        'in the work dir')
    parser.add_argument('--amp', nargs='?', const=True, default=False,
                        choices=['bf16', 'fp16', 'bfloat16', 'float16'], metavar='{bf16,fp16}',
                        help='mixed precision (MixedPrecisionOptimWrapper): autocast on the '
                        "model's device, CUDA or CPU; --amp alone means the config's "
                        'optim_wrapper.dtype if it sets one, else bf16 (no loss scaling); '
                        'fp16 (dynamic loss scaling) needs CUDA')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the training step (mmengine\'s compile option); '
                        'the first iterations are slow while it compiles')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='kept for old commands: linear lr scaling (lr x total batch / '
                        'auto_scale_lr.base_batch_size) is the default now; this flag only '
                        'overrides auto_scale_lr.enable=False')
    parser.add_argument('--no-scale-lr', action='store_true',
                        help='train with the config lr as written, whatever the total batch '
                        '(default: lr x total batch / auto_scale_lr.base_batch_size)')
    parser.add_argument('--accumulate', type=int, metavar='K',
                        help='gradient accumulation: one optimizer step every K iterations '
                        '(optim_wrapper.accumulative_counts=K); the total batch is '
                        'processes x batch x K')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    parser.add_argument('--overwrite', action='store_true',
                        help='allow writing over the checkpoints of an earlier run in the '
                        'work dir')
    parser.add_argument('--tensorboard', action='store_true',
                        help='also write every logged scalar (losses, lr, validation and '
                        'monitor metrics) as TensorBoard events next to scalars.json, in '
                        '<work dir>/<timestamp>/vis_data/ (mmengine\'s TensorboardVisBackend '
                        'added to visualizer.vis_backends; needs the tensorboard package: '
                        'pip install -e .[tensorboard]); view with tensorboard --logdir '
                        '<work dir>')
    add_config_args(parser, example='train_cfg.max_iters=10')
    return parse_tool_args(parser, argv)


def set_amp(cfg: Config, amp) -> None:
    """Make ``cfg.optim_wrapper`` a MixedPrecisionOptimWrapper. ``amp`` is True (bare
    ``--amp``: the config's ``optim_wrapper.dtype`` if set, else bf16) or a dtype name."""
    import torch

    from mmbeit.engine.optimizers import resolve_amp_dtype
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind not in ('OptimWrapper', 'AmpOptimWrapper', 'MixedPrecisionOptimWrapper'):
        raise SystemExit(f'train.py: --amp replaces optim_wrapper.type, but this config uses '
                         f'{kind!r}; set its mixed precision in the config instead')
    try:
        dtype = resolve_amp_dtype(wrapper.get('dtype') if amp is True else amp)
    except ValueError as err:
        raise SystemExit(f'train.py: --amp: {err}') from None
    if dtype == torch.float16 and not torch.cuda.is_available():
        raise SystemExit('train.py: --amp fp16 needs a CUDA GPU (fp16 autocast with loss '
                         'scaling is a CUDA path); on this machine use --amp bf16 (or --amp)')
    wrapper.type = 'MixedPrecisionOptimWrapper'
    wrapper.dtype = 'float16' if dtype == torch.float16 else 'bfloat16'
    if dtype == torch.bfloat16:
        wrapper.pop('loss_scale', None)  # an fp16 setting; bf16 needs no scaling
    wrapper.pop('use_fsdp', None)  # an AmpOptimWrapper argument ours does not take


TENSORBOARD = 'TensorboardVisBackend'


def _type_name(kind) -> str:
    """A config ``type`` (a name with or without scope, or a class) as its bare name."""
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    return name.rsplit('.', 1)[-1]


def _is_tensorboard(backend) -> bool:
    return isinstance(backend, dict) and _type_name(backend.get('type')) == TENSORBOARD


def _iteration_based(cfg: Config) -> bool:
    loop = cfg.get('train_cfg') or {}
    kind = loop.get('type')
    if kind is None:  # mmengine picks the loop from by_epoch / max_iters
        return 'max_iters' in loop or loop.get('by_epoch') is False
    return _type_name(kind) == 'IterBasedTrainLoop'


def add_tensorboard(cfg: Config) -> Optional[str]:
    """Add mmengine's TensorboardVisBackend to ``cfg.visualizer.vis_backends`` (once).

    ``--cfg-options`` cannot do this: it parses ``dict(...)`` items of a list as strings
    and refuses an index past the end of a list, so this flag is the one way to switch
    TensorBoard on for any config without editing it. A config without a visualizer gets
    mmengine's default one (LocalVisBackend: scalars.json) with TensorBoard added.

    In an iteration-based loop mmengine's LoggerHook logs validation metrics at the
    loop's epoch, always 0, unless ``log_metric_by_epoch=False``: every evaluation would
    sit at step 0 of TensorBoard's plots. That setting is made here (scalars.json's
    validation lines then carry their iteration too; plot_curves reads either); returns
    the note to log when it was changed, else None."""
    if cfg.get('visualizer') is None:
        cfg.visualizer = dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')])
    backends = list(cfg.visualizer.get('vis_backends') or [])
    if not any(_is_tensorboard(b) for b in backends):
        backends.append(dict(type=TENSORBOARD))
    cfg.visualizer.vis_backends = backends
    logger = (cfg.get('default_hooks') or {}).get('logger')
    if isinstance(logger, dict) and _iteration_based(cfg) and \
            logger.get('log_metric_by_epoch', True):
        logger['log_metric_by_epoch'] = False
        return ('--tensorboard: iteration-based loop, so validation metrics are logged at '
                'their iteration (default_hooks.logger.log_metric_by_epoch=False), not at '
                'epoch 0')
    return None


def check_tensorboard(cfg: Config, asked_by: str) -> None:
    """Fail before anything is built when the run would write TensorBoard events and
    the ``tensorboard`` package cannot be imported. (mmengine imports it only when the
    Runner records the config, after the model is built, and its message does not say
    which setting asked for TensorBoard.)"""
    vis = cfg.get('visualizer') or {}
    if not any(_is_tensorboard(b) for b in vis.get('vis_backends') or []):
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f'train.py: {asked_by} writes TensorBoard events '
                         f'({TENSORBOARD}), which needs the tensorboard package; this Python '
                         f'({sys.executable}) cannot import it ({exc}). Install it with '
                         f'"pip install tensorboard" (or "pip install -e .[tensorboard]" in '
                         f'the mmbeit folder), or train without TensorBoard') from None


def merge_args(cfg: Config, args) -> Config:
    if args.tensorboard:
        note = add_tensorboard(cfg)
        if note:
            print_log(note, logger='current')
    check_tensorboard(cfg, '--tensorboard' if args.tensorboard else
                      f'{args.config} (visualizer.vis_backends)')
    if args.amp:
        set_amp(cfg, args.amp)
    if args.compile:
        cfg.compile = cfg.get('compile') or True
    if args.auto_scale_lr:
        if args.no_scale_lr:
            raise SystemExit('train.py: --auto-scale-lr and --no-scale-lr contradict each '
                             'other; give one (scaling is on by default)')
        if not cfg.get('auto_scale_lr') or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit(f'train.py: --auto-scale-lr: {args.config} has no '
                             f'auto_scale_lr=dict(base_batch_size=...) entry to scale from')
        cfg.auto_scale_lr.enable = True
        print_log('--auto-scale-lr: linear lr scaling is the default now; the flag is only '
                  'needed to override auto_scale_lr.enable=False', logger='current')
    if args.accumulate is not None:
        if args.accumulate < 1:
            raise SystemExit(f'train.py: --accumulate {args.accumulate}: K must be 1 or more '
                             f'(the number of iterations summed into one optimizer step)')
        if not cfg.get('optim_wrapper') or 'optimizer' not in cfg.optim_wrapper:
            raise SystemExit(f'train.py: --accumulate: {args.config} has no '
                             f'optim_wrapper=dict(optimizer=...) to accumulate for')
        cfg.optim_wrapper.accumulative_counts = args.accumulate
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        sys.exit(f'train.py: config file {args.config!r} does not exist')
    try:
        cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    except UnknownConfigKeyError as exc:
        sys.exit(f'train.py: {exc}')
    cfg = merge_args(cfg, args)
    if args.tensorboard:
        print_log(f'--tensorboard: events go to {cfg.work_dir}/<timestamp>/vis_data/ with '
                  f'scalars.json; view them with: tensorboard --logdir {cfg.work_dir}',
                  logger='current')
    check_work_dir(cfg.work_dir, cfg.get('resume', False), args.overwrite)
    try:
        run(cfg, 'train', scale_lr_off_by='--no-scale-lr' if args.no_scale_lr else None)
    except CheckpointError as exc:  # --resume / load_from / Pretrained: names file and keys
        sys.exit(f'train.py: {type(exc).__name__}: {exc}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
