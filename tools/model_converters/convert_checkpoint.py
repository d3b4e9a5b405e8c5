"""Convert a BEiT / BEiT v2 checkpoint (unilm, timm, HF, mmpretrain, mmseg) to mmbeit.

    python tools/model_converters/convert_checkpoint.py SRC DST --src unilm [--kind backbone]

SRC is read by ``mmbeit.checkpoint.read_checkpoint`` (weights-only: a pickle that would run
code is refused and nothing in it is executed; unilm's ``args`` Namespace is allowed).
``.safetensors`` files are read when the ``safetensors`` package is installed. DST gets
``{'state_dict': ..., 'meta': {'converted_from': ..., ...}}``, written atomically
(``mmbeit.checkpoint.save_checkpoint``); an existing DST is kept unless ``--force``. See
``mmbeit.converters``.
"""
import argparse
import os.path as osp
import sys

try:
    from mmbeit.converters import KINDS, SOURCES, ConversionError, convert
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from mmbeit.converters import KINDS, SOURCES, ConversionError, convert
from mmbeit.checkpoint import CheckpointError, read_checkpoint, save_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a BEiT checkpoint to an mmbeit layout (docs/contracts.md).')
    parser.add_argument('src_path', metavar='SRC', help='input checkpoint (.pth/.pt/.bin/'
                        '.safetensors)')
    parser.add_argument('dst_path', metavar='DST', help='output checkpoint (.pth)')
    parser.add_argument('--src', required=True, choices=SOURCES,
                        help='layout of SRC (unilm and timm share names)')
    parser.add_argument('--kind', choices=KINDS, default=None,
                        help='layout to produce; detected from the keys when omitted. '
                        'Asking for a kind drops (with reasons) the parts it has no room for')
    parser.add_argument('--force', action='store_true', help='overwrite an existing DST')
    return parser.parse_args(argv)


def load_source(path: str):
    """Load a checkpoint without executing code from it; exits with a message on failure."""
    if path.endswith('.safetensors') and osp.isfile(path):
        try:
            from safetensors.torch import load_file
        except ImportError:
            sys.exit(f'error: {path!r} is a .safetensors file but the safetensors package '
                     'is not installed (pip install safetensors)')
        return load_file(path, device='cpu')
    try:
        return read_checkpoint(path)
    except CheckpointError as err:  # each names the file and what to do
        sys.exit(f'error: {err}')


def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.exists(args.dst_path) and not args.force:
        sys.exit(f'error: {args.dst_path!r} exists; pass --force to overwrite it')
    checkpoint = load_source(args.src_path)
    try:
        state_dict, report = convert(checkpoint, args.src, args.kind)
    except ConversionError as err:
        sys.exit(f'error: cannot convert {args.src_path!r}: {err}')
    print(report)
    meta = dict(converted_from=args.src, source_file=osp.basename(args.src_path),
                kind=report.kind, dropped=report.dropped)
    save_checkpoint({'state_dict': state_dict, 'meta': meta}, args.dst_path)
    print(f'saved {len(state_dict)} tensors to {args.dst_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
