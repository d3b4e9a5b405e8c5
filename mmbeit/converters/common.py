"""Shared pieces of the checkpoint converters (docs/contracts.md).

Every source layout is first mapped onto one *canonical* namespace, the unilm/timm names
of the unilm layout (docs/contracts.md), then arranged into the mmbeit layout of the requested kind
(``mmbeit/converters/convert.py``). Canonical keys are:

* backbone keys exactly as ``BEiTViT`` names them (``BACKBONE_KEY`` below);
* ``head.{weight,bias}`` (classifier Linear), ``lm_head.{weight,bias}`` (MIM head),
  ``cls_pt_layers.k.<block key>`` (BEiT v2 aggregation blocks);
* ``neck.upsample_4x.{0,1,3}.*``, ``neck.upsample_2x.0.*`` (mmseg ``Feature2Pyramid``),
  ``decode_head.*``, ``auxiliary_head.*`` (mmseg heads, unchanged).

``Mapping`` records, for each source key, whether it was placed (and where) or dropped (and
why); whatever is left is reported as unplaced. Values are produced lazily so that trying
a layout (for the error hints) costs no tensor work.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple
from typing import Mapping as MappingT

import torch

from mmbeit.checkpoint import CheckpointError

SOURCES = ('unilm', 'timm', 'hf', 'mmpretrain', 'mmseg')
KINDS = ('backbone', 'classifier', 'pretrain', 'segmentor')

# Reasons shared by several source layouts.
REASON_REL_INDEX = 'constant index buffer, rebuilt from the patch grid by BEiTViT'
REASON_K_BIAS = 'BEiT has no key bias (the k bias is a fixed zero); this one is all zeros'

_BLOCK_PARAM = re.compile(
    r'(norm1|norm2|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)'
    r'|attn\.qkv\.weight|attn\.q_bias|attn\.v_bias|attn\.relative_position_bias_table'
    r'|gamma_1|gamma_2')
_TOP_PARAM = re.compile(
    r'patch_embed\.proj\.(weight|bias)|cls_token|mask_token|pos_embed'
    r'|rel_pos_bias\.relative_position_bias_table|(norm|fc_norm)\.(weight|bias)')
BLOCK_KEY = re.compile(r'blocks\.\d+\.(?:' + _BLOCK_PARAM.pattern + r')')
BACKBONE_KEY = re.compile(r'(?:' + _TOP_PARAM.pattern + r')|' + BLOCK_KEY.pattern)
AGG_KEY = re.compile(r'cls_pt_layers\.\d+\.(?:' + _BLOCK_PARAM.pattern + r')')
SEG_NECK_KEY = re.compile(r'neck\.(upsample_4x\.[013]|upsample_2x\.0)\.[A-Za-z_]+')


def canonical_part(key: str) -> Optional[str]:
    """Which part of a model a canonical key belongs to, or None if it is not canonical.

    Parts: 'backbone', 'cls_head', 'lm_head', 'aggregation', 'seg_neck', 'seg_head'.
    """
    if BACKBONE_KEY.fullmatch(key):
        return 'backbone'
    if key in ('head.weight', 'head.bias'):
        return 'cls_head'
    if key in ('lm_head.weight', 'lm_head.bias'):
        return 'lm_head'
    if AGG_KEY.fullmatch(key):
        return 'aggregation'
    if SEG_NECK_KEY.fullmatch(key):
        return 'seg_neck'
    if key.startswith(('decode_head.', 'auxiliary_head.')):
        return 'seg_head'
    return None


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted as asked (a ``ValueError``)."""


class Mapping:
    """Where each key of a source state dict goes.

    ``place(dst, *src_keys, fn=None)`` puts ``fn(*tensors)`` (default: the one tensor) at
    canonical key ``dst``; ``drop(key, reason)`` records a deliberate drop. Placing two
    sources onto one destination raises.
    """

    def __init__(self, state_dict: MappingT[str, torch.Tensor]):
        self.sd = state_dict
        self.targets: 'OrderedDict[str, Tuple[Tuple[str, ...], Optional[Callable]]]' = \
            OrderedDict()
        self.placed: Dict[str, str] = {}  # source key -> canonical key
        self.dropped: Dict[str, str] = {}  # source key -> reason

    def place(self, dst: str, *src_keys: str, fn: Optional[Callable] = None) -> None:
        if dst in self.targets:
            raise ConversionError(
                f'two source entries map onto {dst!r}: {list(self.targets[dst][0])} and '
                f'{list(src_keys)}; the checkpoint mixes two layouts')
        self.targets[dst] = (src_keys, fn)
        for k in src_keys:
            self.placed[k] = dst

    def drop(self, key: str, reason: str) -> None:
        self.dropped[key] = reason

    def handled(self, key: str) -> bool:
        return key in self.placed or key in self.dropped

    def unplaced(self) -> List[str]:
        return sorted(k for k in self.sd if not self.handled(k))

    def value(self, dst: str) -> torch.Tensor:
        src_keys, fn = self.targets[dst]
        tensors = [self.sd[k] for k in src_keys]
        return fn(*tensors) if fn is not None else tensors[0]


@dataclass
class ConversionReport:
    """What ``convert`` did: counts, the detected kind and every dropped key with its
    reason (source key names, after unwrapping)."""
    src: str
    kind: str
    kind_detected: bool
    containers: List[str] = field(default_factory=list)
    stripped_prefix: str = ''
    num_source_keys: int = 0
    num_placed: int = 0
    num_output_keys: int = 0
    dropped: Dict[str, str] = field(default_factory=dict)
    unexpected_target_keys: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        how = 'detected from the keys' if self.kind_detected else 'as asked'
        lines = [f'converted --src {self.src} to the {self.kind!r} layout ({how})']
        if self.containers or self.stripped_prefix:
            path = ''.join(f'[{c!r}]' for c in self.containers) or '(top level)'
            extra = f', stripped prefix {self.stripped_prefix!r}' if self.stripped_prefix else ''
            lines.append(f'  state dict taken from checkpoint{path}{extra}')
        lines.append(f'  source keys: {self.num_source_keys}, placed: {self.num_placed}, '
                     f'dropped: {len(self.dropped)}, output keys: {self.num_output_keys}')
        if self.dropped:
            lines.append('  dropped:')
            lines += [f'    {k}: {r}' for k, r in sorted(self.dropped.items())]
        if self.unexpected_target_keys:
            lines.append('  WARNING: output keys not in strict_target_keys: '
                         f'{self.unexpected_target_keys}')
        return '\n'.join(lines)
