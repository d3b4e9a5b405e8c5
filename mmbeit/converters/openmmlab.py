"""mmpretrain and mmseg layouts -> canonical keys (docs/contracts.md).

Both name a block ``layers.i.{ln1, ln2, attn.*, ffn.layers.0.0, ffn.layers.1, gamma_1,
gamma_2}`` and the patch embedding ``patch_embed.projection``.

mmpretrain (``BEiTViT`` / ``BEiTPretrainViT`` inside ``ImageClassifier`` or the ``BEiT`` /
``BEiTv2`` self-supervised algorithms), module trees read from mmpretrain 1.2:

* ``backbone.ln1`` = final norm (``final_norm=True``) -> ``norm``; ``backbone.ln2`` = the
  norm of the mean patch token (``out_type='avg_featmap'``) -> ``fc_norm``;
* ``head.fc`` (LinearClsHead) -> ``head``; ``head.cls_head`` (BEiTV1Head/BEiTV2Head) ->
  ``lm_head``;
* v2: ``neck.patch_aggregation.k.*`` (BEiTV2Neck, block naming) -> ``cls_pt_layers.k.*``,
  ``neck.norm`` (the shared final norm; the v2 backbone has ``final_norm=False``) -> ``norm``;
* ``target_generator.*`` (DALL-E / VQ-KD tokenizer) and ``data_preprocessor.*`` are dropped.

mmseg (``mmseg.models.backbones.BEiT`` in an ``EncoderDecoder``): ``backbone.ln1`` = final
norm, ``neck.upsample_4x`` / ``neck.upsample_2x`` (``Feature2Pyramid``) and the heads pass
through. mmseg's ``beit2mmseg.py`` only renames keys inside blocks and the patch embedding,
so unilm names left at the top level (``rel_pos_bias.*``, ``mask_token``, ``norm``,
``fc_norm``, ``head``, ``lm_head``) are accepted too.

A state dict without ``backbone.`` keys is read as a bare backbone.
"""
import re

from .common import REASON_REL_INDEX, Mapping, canonical_part
from .unilm import map_body

_BLOCK_RENAMES = (
    ('ln1.', 'norm1.'),
    ('ln2.', 'norm2.'),
    ('ffn.layers.0.0.', 'mlp.fc1.'),
    ('ffn.layers.1.', 'mlp.fc2.'),
)
_LAYER = re.compile(r'layers\.(\d+)\.(.+)')
_AGG = re.compile(r'neck\.patch_aggregation\.(\d+)\.(.+)')
_TOP_RENAMES = {
    'ln1.weight': 'norm.weight', 'ln1.bias': 'norm.bias',
    'ln2.weight': 'fc_norm.weight', 'ln2.bias': 'fc_norm.bias',
    'patch_embed.projection.weight': 'patch_embed.proj.weight',
    'patch_embed.projection.bias': 'patch_embed.proj.bias',
}
REASON_TOKENIZER = ('tokenizer (DALL-E / VQ-KD target generator) weights are not part of '
                    'the BEiT model; convert the tokenizer separately')
REASON_PREPROCESSOR = 'data preprocessor buffers (mean/std) come from the config'


def block_name(rest: str) -> str:
    """openmmlab block parameter name -> unilm block parameter name."""
    for old, new in _BLOCK_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


_SAME_TOP = re.compile(r'cls_token|mask_token|pos_embed|rel_pos_bias\.relative_position_bias_table')


def _map_common(m: Mapping, key: str, name: str) -> None:
    """A backbone entry ``name`` (no ``backbone.`` prefix) named the openmmlab way."""
    layer = _LAYER.fullmatch(name)
    if layer is not None:
        rest = layer.group(2)
        if rest.startswith(('norm1.', 'norm2.', 'mlp.')):
            return  # unilm names inside an openmmlab layer: not a real layout
        renamed = f'blocks.{layer.group(1)}.{block_name(rest)}'
        if rest == 'attn.relative_position_index':
            m.drop(key, REASON_REL_INDEX)
        elif canonical_part(renamed) == 'backbone':
            m.place(renamed, key)
    elif name in _TOP_RENAMES:
        m.place(_TOP_RENAMES[name], key)
    elif _SAME_TOP.fullmatch(name):
        m.place(name, key)
    elif name == 'rel_pos_bias.relative_position_index':
        m.drop(key, REASON_REL_INDEX)


def _bare(m: Mapping) -> bool:
    return not any(k.startswith('backbone.') for k in m.sd)


def map_mmpretrain(m: Mapping) -> None:
    """Fill ``m`` from an mmpretrain state dict."""
    bare = _bare(m)
    for key in m.sd:
        agg = _AGG.fullmatch(key)
        if key.startswith('backbone.') or bare:
            _map_common(m, key, key[len('backbone.'):] if not bare else key)
        elif agg is not None:
            name = f'cls_pt_layers.{agg.group(1)}.{block_name(agg.group(2))}'
            if agg.group(2) == 'attn.relative_position_index':
                m.drop(key, REASON_REL_INDEX)
            elif canonical_part(name) == 'aggregation':
                m.place(name, key)
        elif key in ('neck.norm.weight', 'neck.norm.bias'):
            m.place(key[len('neck.'):], key)
        elif key in ('head.fc.weight', 'head.fc.bias'):
            m.place('head.' + key.rsplit('.', 1)[1], key)
        elif key in ('head.cls_head.weight', 'head.cls_head.bias'):
            m.place('lm_head.' + key.rsplit('.', 1)[1], key)
        elif key.startswith('target_generator.'):
            m.drop(key, REASON_TOKENIZER)
        elif key.startswith('data_preprocessor.'):
            m.drop(key, REASON_PREPROCESSOR)


def map_mmseg(m: Mapping) -> None:
    """Fill ``m`` from an mmseg state dict (EncoderDecoder, or a bare ``BEiT`` backbone,
    e.g. the output of mmseg's ``beit2mmseg.py``)."""
    bare = _bare(m)
    for key in m.sd:
        if key.startswith(('decode_head.', 'auxiliary_head.')) or (
                canonical_part(key) == 'seg_neck'):
            m.place(key, key)
        elif key.startswith('data_preprocessor.'):
            m.drop(key, REASON_PREPROCESSOR)
        elif key.startswith('backbone.') or bare:
            name = key[len('backbone.'):] if not bare else key
            _map_common(m, key, name)
            if not m.handled(key) and not name.startswith(('blocks.', 'layers.')):
                map_body(m, key, name)  # unilm names beit2mmseg leaves untouched
