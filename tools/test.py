"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [options]``.

The checkpoint is read weights-only and loaded strictly (``mmbeit.checkpoint``,
docs/checkpoints.md): a file that does not fit the config's model is an error naming the
keys, not an evaluation of random weights.
Multi-process: ``tools/dist_test.sh CONFIG CHECKPOINT N``.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import ConfigDict

from mmbeit.checkpoint import CheckpointError
from mmbeit.engine.config_checks import UnknownConfigKeyError
from mmbeit.engine.runtime import add_config_args, load_config, parse_tool_args, run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint with mmbeit')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation logs go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file')
    add_config_args(parser, example='test_dataloader.batch_size=8')
    return parse_tool_args(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for what, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            sys.exit(f'test.py: {what} file {path!r} does not exist')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        sys.exit(f'test.py: --out must name a .pkl file, got {args.out!r}')
    try:
        cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    except UnknownConfigKeyError as exc:
        sys.exit(f'test.py: {exc}')
    if cfg.get('test_dataloader') is None or cfg.get('test_evaluator') is None:
        sys.exit(f'test.py: {args.config} defines no test_dataloader / test_evaluator')
    cfg.load_from, cfg.resume = args.checkpoint, False
    if args.out:
        dump = ConfigDict(type='DumpResults', out_file_path=args.out)
        evaluator = cfg.test_evaluator
        cfg.test_evaluator = (list(evaluator) if isinstance(evaluator, (list, tuple))
                              else [evaluator]) + [dump]
    try:
        run(cfg, 'test')
    except CheckpointError as exc:  # names the file and the keys or what is wrong with it
        sys.exit(f'test.py: {type(exc).__name__}: {exc}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
