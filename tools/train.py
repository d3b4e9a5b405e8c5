"""Train a model from a config: ``python tools/train.py CONFIG [options]``.

The flags are the usual OpenMMLab ones; see ``--help``. Multi-process runs go through
``tools/dist_train.sh CONFIG N`` (torchrun; NCCL on GPUs, gloo on CPU machines) or
``tools/slurm_train.sh``.
"""
import argparse
import os.path as osp
import sys

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


def merge_args(cfg: Config, args) -> Config:
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
    check_work_dir(cfg.work_dir, cfg.get('resume', False), args.overwrite)
    try:
        run(cfg, 'train', scale_lr_off_by='--no-scale-lr' if args.no_scale_lr else None)
    except CheckpointError as exc:  # --resume / load_from / Pretrained: names file and keys
        sys.exit(f'train.py: {type(exc).__name__}: {exc}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
