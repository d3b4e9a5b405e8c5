"""unilm / timm layout -> canonical keys (docs/contracts.md).

unilm and timm share names (timm loads unilm's ``model`` dicts directly). Handled:

* fine-tuned classifiers: backbone keys, per-layer ``blocks.i.attn.relative_position_bias_table``,
  ``fc_norm`` (mean pooling) or ``norm`` (cls pooling), ``head``;
* pretraining (v1 ``VisionTransformerForMaskedImageModeling``, v2 ``...CLS``): ``mask_token``,
  shared ``rel_pos_bias``, ``norm``, ``lm_head``, v2 ``cls_pt_layers.k.*``;
* segmentation (unilm ``semantic_segmentation``, an mmseg 0.x checkpoint): ``backbone.*`` with
  ``backbone.fpn1.{0,1,3}`` / ``backbone.fpn2.0`` (-> mmseg ``Feature2Pyramid`` names;
  ``fpn3`` is Identity and ``fpn4`` MaxPool, neither has parameters) and mmseg heads
  ``decode_head.*`` / ``auxiliary_head.*`` (same names in mmseg 1.x).

Dropped: every ``relative_position_index`` (rebuilt from the grid) and a persisted all-zero
timm ``k_bias`` buffer.
"""
import re

from .common import REASON_K_BIAS, REASON_REL_INDEX, ConversionError, Mapping, canonical_part

_FPN = re.compile(r'fpn([12])\.(\d+)\.(.+)')
_FPN_INDICES = {'1': ('neck.upsample_4x', {'0', '1', '3'}), '2': ('neck.upsample_2x', {'0'})}


def _zero_k_bias(m: Mapping, key: str) -> None:
    if m.sd[key].count_nonzero() != 0:
        raise ConversionError(f'{key} has non-zero values, but BEiT has no key bias')
    m.drop(key, REASON_K_BIAS)


def map_body(m: Mapping, key: str, name: str) -> None:
    """Place one unilm-named entry ``name`` (source key ``key``) if it is canonical."""
    if name.endswith('relative_position_index') and (
            name == 'rel_pos_bias.relative_position_index'
            or re.fullmatch(r'(blocks|cls_pt_layers)\.\d+\.attn\.relative_position_index',
                            name)):
        m.drop(key, REASON_REL_INDEX)
    elif re.fullmatch(r'(blocks|cls_pt_layers)\.\d+\.attn\.k_bias', name):
        _zero_k_bias(m, key)
    elif canonical_part(name) in ('backbone', 'cls_head', 'lm_head', 'aggregation'):
        m.place(name, key)


def map_unilm(m: Mapping) -> None:
    """Fill ``m`` from a unilm/timm state dict (bare, or ``backbone.``-prefixed seg)."""
    for key in m.sd:
        if key.startswith(('decode_head.', 'auxiliary_head.')):
            m.place(key, key)
            continue
        name = key[len('backbone.'):] if key.startswith('backbone.') else key
        fpn = _FPN.fullmatch(name) if key.startswith('backbone.') else None
        if fpn is not None:
            dst, allowed = _FPN_INDICES[fpn.group(1)]
            if fpn.group(2) in allowed:
                m.place(f'{dst}.{fpn.group(2)}.{fpn.group(3)}', key)
            continue
        map_body(m, key, name)
