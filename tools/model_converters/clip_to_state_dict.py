"""Extract the image tower of an OpenAI CLIP checkpoint as a plain state dict.

    python tools/model_converters/clip_to_state_dict.py ViT-B-16.pt clip_vit_b16.pth [--force]

OpenAI distributes CLIP (e.g. ``ViT-B-16.pt``) as a TorchScript archive, which
``torch.load(weights_only=True)`` refuses. SRC may be such an archive (read with
``torch.jit.load``: this converter is for archives from a source you trust, such as
OpenAI's download) or a plain state dict (read weights-only by
:func:`mmbeit.checkpoint.read_state_dict`; a ``state_dict`` / ``model`` / ``module``
container is unwrapped). The ``visual.*`` keys are kept with the prefix removed (an
image-tower-only dict is kept as it is), giving the key layout of
``mmbeit.models.tokenizers.teachers.CLIPViT``; dtypes are kept (OpenAI's archives are
fp16, loading them into the fp32 teacher is exact). DST is written through
:func:`mmbeit.checkpoint.save_checkpoint` (a temporary file next to it, renamed at the
end); an existing DST is kept unless ``--force``.
"""
import argparse
import os.path as osp
import sys
import warnings
from collections import OrderedDict

import torch

try:
    import mmbeit  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from mmbeit.checkpoint import CheckpointError, read_state_dict, save_checkpoint  # noqa: E402
from mmbeit.models.tokenizers.teachers import (  # noqa: E402
    clip_visual_state_dict,
    is_torchscript_archive,
)

REQUIRED = ('conv1.weight', 'class_embedding', 'positional_embedding', 'proj')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Save the image tower of an OpenAI CLIP checkpoint (TorchScript archive '
        'or state dict) as a plain state dict for the CLIPViT teacher.')
    parser.add_argument('src_path', metavar='SRC', help='CLIP checkpoint (.pt/.pth)')
    parser.add_argument('dst_path', metavar='DST', help='output state dict (.pth)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing DST')
    return parser.parse_args(argv)


def load_clip(path: str) -> dict:
    """The state dict of SRC, from a TorchScript archive or a weights-only load."""
    if not osp.isfile(path):
        sys.exit(f'error: checkpoint {path!r} does not exist')
    if is_torchscript_archive(path):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)  # torch.jit is deprecated
            try:
                module = torch.jit.load(path, map_location='cpu')
            except RuntimeError as err:
                sys.exit(f'error: cannot read TorchScript archive {path!r}: {err}')
        return OrderedDict(module.state_dict())
    try:
        return read_state_dict(path)
    except CheckpointError as err:  # its message names the file
        sys.exit(f'error: {err}')


def extract_visual(state_dict: dict, src: str) -> dict:
    """The image tower of ``state_dict`` in CLIPViT's layout, or exit with a message."""
    visual, ignored = clip_visual_state_dict(state_dict)
    if ignored:
        print(f'kept the visual.* keys, left out {ignored} other key(s) (text tower, '
              'logit_scale, ...)')
    lacking = [k for k in REQUIRED if k not in visual]
    if lacking:
        sys.exit(f'error: {src!r} is not a CLIP ViT checkpoint: no {lacking} '
                 '(with or without the visual. prefix); ResNet CLIP models are not supported')
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in visual.items())


def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.exists(args.dst_path) and not args.force:
        sys.exit(f'error: {args.dst_path!r} exists; pass --force to overwrite it')
    visual = extract_visual(load_clip(args.src_path), args.src_path)
    dtypes = sorted({str(v.dtype).replace('torch.', '') for v in visual.values()})
    save_checkpoint(visual, args.dst_path)
    print(f'saved {len(visual)} tensors ({", ".join(dtypes)}) to {args.dst_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
