"""Convert DALL-E dVAE weights into a plain state dict for ``DALLETokenizer``.

    python tools/model_converters/dalle_to_state_dict.py encoder.pkl dalle_encoder.pth \
        [--part encoder|decoder] [--force]

OpenAI publishes the dVAE as whole pickled ``dall_e`` modules (``encoder.pkl``,
``decoder.pkl``, torch's legacy format), which mmbeit does not read at run time. This tool
reads SRC once with :func:`mmbeit.checkpoint.pickled_modules.read_pickled` and the
allowlist :data:`DALLE_MODULE_CLASSES` below: OpenAI's module classes become inert
stand-ins, nothing of the ``dall_e`` package is imported and nothing the file names is
called; anything outside the allowlist is refused. SRC may also be a state dict (e.g.
mmpretrain's ``dalle_encoder.pth``; containers and the ``module.``, ``encoder.`` /
``decoder.``, ``target_generator.`` prefixes are handled as ``DALLETokenizer`` does).

The part is the pickled class (``dall_e.encoder.Encoder`` / ``dall_e.decoder.Decoder``),
else the prefix or the input conv's kernel (7x7 encoder, 1x1 decoder); ``--part`` names it
and must agree. The sizes (``n_hid``, ``n_blk_per_group``, ``vocab_size``, ...) are read
from the tensors' shapes, a ``DALLEEncoder`` / ``DALLEDecoder`` of those sizes is built, and
the weights must fit it exactly (``load_state_dict_checked``). DST gets the ``blocks.*``
tensors, written atomically (``save_checkpoint``); an existing DST is kept unless
``--force``. Then pass DST as ``encoder_checkpoint`` / ``decoder_checkpoint`` (with the
printed sizes when they are not OpenAI's).
"""
import argparse
import inspect
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, Tuple

try:
    import mmbeit  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from mmbeit.checkpoint import (  # noqa: E402
    CheckpointError,
    load_state_dict_checked,
    save_checkpoint,
    unwrap_state_dict,
)
from mmbeit.checkpoint.pickled_modules import (  # noqa: E402
    PickledModule,
    module_state_dict,
    read_pickled,
)
from mmbeit.models.tokenizers.dall_e import (  # noqa: E402
    DALLEDecoder,
    DALLEEncoder,
    dalle_state_dict,
)

#: The module classes OpenAI's files hold (``dall_e`` 0.1 and the torch modules it uses).
#: Both parts' classes are allowed for either file, so that a decoder file given as the
#: encoder is reported as such rather than as unsafe. Each becomes an inert stand-in.
DALLE_MODULE_CLASSES: Tuple[str, ...] = (
    'dall_e.encoder.Encoder', 'dall_e.encoder.EncoderBlock',
    'dall_e.decoder.Decoder', 'dall_e.decoder.DecoderBlock',
    'dall_e.utils.Conv2d',
    'torch.nn.modules.container.Sequential', 'torch.nn.modules.activation.ReLU',
    'torch.nn.modules.linear.Identity', 'torch.nn.modules.pooling.MaxPool2d',
    'torch.nn.modules.upsampling.Upsample',
)
ROOT_CLASS = {'encoder': 'dall_e.encoder.Encoder', 'decoder': 'dall_e.decoder.Decoder'}
MODELS = {'encoder': DALLEEncoder, 'decoder': DALLEDecoder}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Save DALL-E dVAE weights (OpenAI\'s pickled encoder.pkl / decoder.pkl, '
        'or a state dict) as a plain state dict for DALLETokenizer.')
    parser.add_argument('src_path', metavar='SRC', help='encoder.pkl / decoder.pkl / .pth')
    parser.add_argument('dst_path', metavar='DST', help='output state dict (.pth)')
    parser.add_argument('--part', choices=sorted(ROOT_CLASS),
                        help='which network SRC holds (default: found from SRC)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing DST')
    return parser.parse_args(argv)


def _part_of_state_dict(state_dict: Dict[str, torch.Tensor], src: str) -> str:
    found = {p for p in ROOT_CLASS if any(k.startswith(f'{p}.blocks.') for k in state_dict)}
    if len(found) == 1:
        return found.pop()
    weight = dalle_state_dict(state_dict, 'encoder').get('blocks.input.w')
    if len(found) == 0 and isinstance(weight, torch.Tensor) and weight.dim() == 4:
        kernel = weight.shape[-1]
        if kernel in (7, 1):
            return 'encoder' if kernel == 7 else 'decoder'
    sys.exit(f'error: cannot tell whether {src!r} holds the DALL-E encoder or decoder; pass '
             f'--part encoder or --part decoder')


def read_dalle(path: str, part: str = None) -> Tuple[str, 'OrderedDict[str, torch.Tensor]']:
    """(part, ``blocks.*`` state dict) of SRC, or exit with a message naming the file."""
    what = f'DALL-E {part} weights' if part else 'DALL-E weights'
    try:
        obj = read_pickled(path, DALLE_MODULE_CLASSES, what=what)
        if isinstance(obj, PickledModule):
            roots = {cls: p for p, cls in ROOT_CLASS.items()}
            found = roots.get(obj.pickled_as)
            if found is None:
                sys.exit(f'error: {path!r} holds a pickled {obj.pickled_as}, not a DALL-E '
                         f'encoder or decoder ({", ".join(ROOT_CLASS.values())})')
            if part is not None and found != part:
                sys.exit(f'error: {path!r} holds a pickled {obj.pickled_as}, not a '
                         f'{ROOT_CLASS[part]} (is it the {found} file? --part {found})')
            return found, module_state_dict(obj, path)
        state_dict = unwrap_state_dict(obj)[0]
    except CheckpointError as exc:
        text = str(exc) if path in str(exc) else f'{path!r}: {exc}'
        sys.exit(f'error: {text}')
    part = part or _part_of_state_dict(state_dict, path)
    return part, dalle_state_dict(state_dict, part)


def infer_sizes(state_dict: Dict[str, torch.Tensor], part: str, src: str) -> dict:
    """The ``DALLEEncoder`` / ``DALLEDecoder`` arguments the tensors' shapes imply."""
    need = ('blocks.input.w', 'blocks.output.conv.w')
    lacking = [k for k in need if not isinstance(state_dict.get(k), torch.Tensor)
               or state_dict[k].dim() != 4]
    if lacking:
        sys.exit(f'error: {src!r} is not DALL-E {part} weights: no 4-d {lacking} (keys '
                 f'found: {", ".join(list(state_dict)[:6]) or "none"})')
    groups = {int(m.group(1)) for k in state_dict
              for m in [re.match(r'blocks\.group_(\d+)\.', k)] if m}
    blocks = {int(m.group(1)) for k in state_dict
              for m in [re.match(r'blocks\.group_1\.block_(\d+)\.', k)] if m}
    if not groups or not blocks:
        sys.exit(f'error: {src!r} is not DALL-E {part} weights: no blocks.group_1.block_* '
                 f'keys')
    first, last = state_dict['blocks.input.w'], state_dict['blocks.output.conv.w']
    depth = dict(n_blk_per_group=max(blocks), group_count=max(groups))
    if part == 'encoder':
        sizes = dict(n_hid=first.shape[0], **depth, input_channels=first.shape[1],
                     vocab_size=last.shape[0])
    else:
        sizes = dict(n_init=first.shape[0], n_hid=last.shape[1], **depth,
                     output_channels=last.shape[0] // 2, vocab_size=first.shape[1])
    return {k: int(v) for k, v in sizes.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.exists(args.dst_path) and not args.force:
        sys.exit(f'error: {args.dst_path!r} exists; pass --force to overwrite it')
    part, state_dict = read_dalle(args.src_path, args.part)
    sizes = infer_sizes(state_dict, part, args.src_path)
    try:
        model = MODELS[part](**sizes)
    except (ValueError, RuntimeError) as exc:
        sys.exit(f'error: {args.src_path!r}: the shapes imply a DALL-E {part} of sizes '
                 f'{sizes}, which cannot be built ({exc})')
    try:
        load_state_dict_checked(model, state_dict, source=f'{args.src_path!r}',
                                target=f'DALL-E {part} {sizes}', log=False)
    except CheckpointError as exc:
        sys.exit(f'error: {exc}')
    # clone: the tensors of a legacy file are views of storages that may be shared
    out = OrderedDict((k, v.detach().clone().contiguous()) for k, v in state_dict.items())
    save_checkpoint(out, args.dst_path)
    params = inspect.signature(MODELS[part]).parameters
    other = {k: v for k, v in sizes.items() if params[k].default != v}
    print(f'saved the DALL-E {part} ({len(out)} tensors) to {args.dst_path}; sizes: '
          + ', '.join(f'{k}={v}' for k, v in sizes.items()))
    if other:
        print(f'not OpenAI\'s sizes: build the tokenizer with {part}=dict('
              + ', '.join(f'{k}={v}' for k, v in other.items()) + ')')
    return 0


if __name__ == '__main__':
    sys.exit(main())
