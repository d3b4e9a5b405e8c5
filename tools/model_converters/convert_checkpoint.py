"""Convert a BEiT / BEiT v2 checkpoint (unilm, timm, HF, mmpretrain, mmseg) to mmbeit.

    python tools/model_converters/convert_checkpoint.py SRC DST --src unilm [--kind backbone]

SRC is read with ``torch.load(..., weights_only=True)``: a pickle that would run code is
refused (nothing in it is executed). ``argparse.Namespace`` (kept by unilm training
checkpoints under ``args``) is the one extra class allowed. ``.safetensors`` files are read
when the ``safetensors`` package is installed. DST gets
``{'state_dict': ..., 'meta': {'converted_from': ..., ...}}``, written to ``DST.tmp`` first
and then renamed; an existing DST is kept unless ``--force``. See ``mmbeit.converters``.
"""
import argparse
import os.path as osp
import pickle
import sys

import torch

try:
    from mmbeit.converters import KINDS, SOURCES, ConversionError, convert
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from mmbeit.converters import KINDS, SOURCES, ConversionError, convert
from mmbeit.engine.checkpoint import save_atomic  # noqa: E402


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
    if not osp.isfile(path):
        sys.exit(f'error: checkpoint {path!r} does not exist')
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
        except ImportError:
            sys.exit(f'error: {path!r} is a .safetensors file but the safetensors package '
                     'is not installed (pip install safetensors)')
        return load_file(path, device='cpu')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln),
                   lines[0] if lines else type(err).__name__)
        sys.exit(f'error: refusing to load {path!r}: it is not a plain weights file '
                 f'(torch.load with weights_only=True rejected it: {why}). Nothing in it was '
                 'executed. If you trust the file, re-save its state dict yourself.')
    except (RuntimeError, EOFError, OSError) as err:
        sys.exit(f'error: cannot read checkpoint {path!r}: {err}')


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
    save_atomic({'state_dict': state_dict, 'meta': meta}, args.dst_path)
    print(f'saved {len(state_dict)} tensors to {args.dst_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
