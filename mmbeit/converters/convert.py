"""``convert``: any supported BEiT checkpoint -> an mmbeit checkpoint layout.

Driver: unwrap the container (mmbeit.checkpoint.unwrap_state_dict), map the source names
onto canonical unilm names (unilm.py, hf.py, openmmlab.py), then arrange them in the layout
of the kind asked for or detected (docs/contracts.md "Checkpoint layouts"):

=========== =============================================================================
backbone    ``BEiTViT`` keys, no prefix
classifier  ``backbone.*``, ``head.fc.*``
pretrain    ``backbone.*`` (mask_token, shared rel_pos_bias, norm),
            ``neck.cls_pt_layers.k.*`` (v2), ``head.lm_head.*``
segmentor   ``backbone.*``, ``neck.upsample_4x.{0,1,3}.*``, ``neck.upsample_2x.0.*``,
            ``decode_head.*``, ``auxiliary_head.*``
=========== =============================================================================

Every source key ends up placed or dropped with a reason. Parts of another kind (e.g. the
classifier head when converting to a backbone) are dropped only when ``kind`` is given;
with ``kind=None`` the kind is detected (segmentor > pretrain > classifier > backbone) and
anything that does not fit it is an error. Unplaced keys raise a ``ValueError`` naming all
of them and the ``--src`` / ``--kind`` choices that would place every key.
"""
from collections import OrderedDict
from typing import Dict, Iterable, Optional, Tuple

import torch

from mmbeit.checkpoint import CheckpointError, unwrap_state_dict

from .common import (
    KINDS,
    SOURCES,
    ConversionError,
    ConversionReport,
    Mapping,
    canonical_part,
)
from .hf import map_hf
from .openmmlab import map_mmpretrain, map_mmseg
from .unilm import map_unilm

_MAPPERS = {'unilm': map_unilm, 'timm': map_unilm, 'hf': map_hf,
            'mmpretrain': map_mmpretrain, 'mmseg': map_mmseg}
# part -> kinds whose layout holds it
_PART_KINDS = {
    'backbone': KINDS,
    'cls_head': ('classifier', ),
    'lm_head': ('pretrain', ),
    'aggregation': ('pretrain', ),
    'seg_neck': ('segmentor', ),
    'seg_head': ('segmentor', ),
}
_PART_DESC = {
    'cls_head': 'classifier head',
    'lm_head': 'MIM head (lm_head), used only in pretraining,',
    'aggregation': 'BEiT v2 aggregation blocks (cls_pt_layers), used only in pretraining,',
    'seg_neck': 'segmentation neck',
    'seg_head': 'segmentation head',
}


def detect_kind(parts: Iterable[str]) -> str:
    """The kind of a checkpoint from the canonical parts it holds."""
    parts = set(parts)
    if parts & {'seg_neck', 'seg_head'}:
        return 'segmentor'
    if parts & {'lm_head', 'aggregation'}:
        return 'pretrain'
    if 'cls_head' in parts:
        return 'classifier'
    return 'backbone'


def _target_key(canon: str, part: str, kind: str) -> str:
    if kind == 'backbone':
        return canon
    if part == 'backbone':
        return 'backbone.' + canon
    if part == 'cls_head':
        return 'head.fc.' + canon[len('head.'):]
    if part == 'lm_head':
        return 'head.' + canon
    if part == 'aggregation':
        return 'neck.' + canon
    return canon  # seg neck / heads keep mmseg's names


class _Plan:
    """The outcome of mapping one state dict for one (src, kind)."""

    def __init__(self, sd: Dict[str, torch.Tensor], src: str, kind: Optional[str]):
        self.mapping = m = Mapping(sd)
        _MAPPERS[src](m)
        self.detected = kind is None
        self.kind = kind or detect_kind(canonical_part(c) for c in m.targets)
        self.outputs: 'OrderedDict[str, str]' = OrderedDict()  # output key -> canonical
        self.dropped = dict(m.dropped)
        self.unplaced = m.unplaced()
        self.num_placed = 0
        for canon, (srcs, _) in m.targets.items():
            part = canonical_part(canon)
            if self.kind in _PART_KINDS[part]:
                self.outputs[_target_key(canon, part, self.kind)] = canon
                self.num_placed += len(srcs)
            elif not self.detected:
                for s in srcs:
                    self.dropped[s] = f'{_PART_DESC[part]} not part of a {self.kind} checkpoint'
            else:
                self.unplaced += srcs
        self.unplaced.sort()


def _fits(sd: Dict[str, torch.Tensor], src: str, kind: Optional[str]) -> Optional[_Plan]:
    try:
        plan = _Plan(sd, src, kind)
    except ConversionError:
        return None
    return None if plan.unplaced else plan


def _suggestions(sd: Dict[str, torch.Tensor], src: str, kind: Optional[str]) -> str:
    """Which other --src/--kind would place (or drop with a reason) every key."""
    names = {'unilm': 'unilm (or timm)', 'hf': 'hf', 'mmpretrain': 'mmpretrain',
             'mmseg': 'mmseg'}
    src = 'unilm' if src == 'timm' else src
    full = []
    for s, name in names.items():
        plan = _fits(sd, s, None) if (s, kind) != (src, None) else None
        if plan is not None:
            full.append(f'--src {name} (detected --kind {plan.kind})')
    if full:
        return ' Every key would be placed with ' + '; '.join(full) + '.'
    with_drops = []
    for s, name in names.items():
        for k in KINDS:
            plan = _fits(sd, s, k) if (s, k) != (src, kind) else None
            if plan is not None:
                with_drops.append(f'--src {name} --kind {k} (drops {len(plan.dropped)})')
    if with_drops:
        return (' Every key would be placed or dropped with a reason with '
                + '; '.join(with_drops) + '.')
    return (' No --src/--kind places every key: the checkpoint may hold another model, or '
            'a layout this converter does not know.')


def convert(state_dict_or_checkpoint, src: str, kind: Optional[str] = None,
            strict_target_keys: Optional[Iterable[str]] = None
            ) -> Tuple['OrderedDict[str, torch.Tensor]', ConversionReport]:
    """Convert a BEiT checkpoint to an mmbeit layout.

    Args:
        state_dict_or_checkpoint: a state dict, or a checkpoint dict holding one under
            ``state_dict`` / ``model`` / ``module`` (nested allowed); a ``module.`` prefix
            on every key is stripped.
        src: 'unilm' / 'timm' (same names), 'hf', 'mmpretrain' or 'mmseg'.
        kind: 'backbone', 'classifier', 'pretrain', 'segmentor', or None to detect it.
        strict_target_keys: optional keys the output must contain; missing ones raise.

    Returns:
        (new state dict, ConversionReport).

    Raises:
        ValueError (``ConversionError``) for unplaced keys (all named, with hints), an
        unknown src/kind, missing strict target keys, a non-zero key bias, or two source
        keys landing on one output key.
    """
    src = str(src).lower()
    if src not in SOURCES:
        raise ConversionError(f'unknown src {src!r}; choose from {list(SOURCES)}')
    if kind is not None and kind not in KINDS:
        raise ConversionError(f'unknown kind {kind!r}; choose from {list(KINDS)} or None')
    try:
        sd, containers, prefix = unwrap_state_dict(state_dict_or_checkpoint)
    except ConversionError:
        raise
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from exc
    if not sd:
        raise ConversionError('the state dict is empty')
    plan = _Plan(sd, src, kind)
    if plan.unplaced:
        how = f'--kind {kind}' if kind else f'detected --kind {plan.kind}'
        raise ConversionError(
            f'--src {src} ({how}): {len(plan.unplaced)} source key(s) could not be placed: '
            f'{plan.unplaced}.' + _suggestions(sd, src, kind))
    out = OrderedDict((dst, plan.mapping.value(canon)) for dst, canon in plan.outputs.items())
    report = ConversionReport(
        src=src, kind=plan.kind, kind_detected=plan.detected, containers=containers,
        stripped_prefix=prefix, num_source_keys=len(sd), num_placed=plan.num_placed,
        num_output_keys=len(out), dropped=dict(sorted(plan.dropped.items())))
    if strict_target_keys is not None:
        expected = set(strict_target_keys)
        missing = sorted(expected - set(out))
        if missing:
            raise ConversionError(
                f'--src {src} --kind {plan.kind}: the output lacks {len(missing)} expected '
                f'key(s): {missing}')
        report.unexpected_target_keys = sorted(set(out) - expected)
    return out, report
