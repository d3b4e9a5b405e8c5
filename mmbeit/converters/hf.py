"""HuggingFace transformers BEiT layout -> canonical keys (docs/contracts.md).

Names come from transformers' ``modeling_beit.py`` and ``convert_beit_unilm_to_pytorch.py``
(``BeitModel`` bare, or under ``beit.`` in ``BeitForImageClassification``,
``BeitForMaskedImageModeling`` and ``BeitForSemanticSegmentation``):

* ``embeddings.{cls_token, mask_token, position_embeddings}``,
  ``embeddings.patch_embeddings.projection.*``;
* ``encoder.relative_position_bias.relative_position_bias_table`` (shared table);
* ``encoder.layer.i.attention.attention.{query,key,value}`` -> ``attn.qkv.weight`` (rows in
  the order q, k, v), ``query.bias`` / ``value.bias`` -> ``q_bias`` / ``v_bias``. HF's key
  Linear has no bias; a ``key.bias`` that is all zeros is dropped, a non-zero one is an error;
* ``...attention.attention.relative_position_bias.relative_position_bias_table`` (per layer),
  ``...attention.output.dense`` -> ``attn.proj``, ``intermediate.dense`` / ``output.dense`` ->
  ``mlp.fc1`` / ``mlp.fc2``, ``layernorm_before/after`` -> ``norm1/2``,
  ``lambda_1/2`` -> ``gamma_1/2`` (HF renamed them so that its legacy gamma->weight rewrite
  does not touch them; no HF version stores ``gamma_1`` for BEiT, so it is not accepted);
* ``layernorm`` (``beit.layernorm``, or the top-level one of the MIM model) -> ``norm``,
  ``pooler.layernorm`` -> ``fc_norm``, ``classifier`` -> ``head``, ``lm_head`` -> ``lm_head``;
* segmentation: ``fpn1.{0,1,3}`` / ``fpn2.0`` -> ``neck.upsample_4x`` / ``neck.upsample_2x``;
  ``decode_head.classifier`` / ``auxiliary_head.classifier`` -> ``...conv_seg``. The other
  head entries (``psp_modules.i.1.{conv,bn}``, ``bottleneck``, ``lateral_convs``,
  ``fpn_convs``, ``fpn_bottleneck``, ``convs``, ``conv_cat``) are named like mmseg's UPerHead /
  FCNHead in the HF source and pass through unchanged. Only the classifier rename is listed
  in docs/contracts.md; pass-through names were read from HF's module tree, not checked
  against a
  real converted checkpoint.

``relative_position_index`` buffers (stored by older transformers versions) are dropped.

transformers 5.x renamed the encoder (read from a real ``BeitForImageClassification`` /
``BeitForMaskedImageModeling`` of transformers 5.23): ``layers.i.attention.{q,k,v}_proj``
(no k bias) and ``o_proj``, ``layers.i.mlp.fc1/fc2``, ``layers.i.relative_position_bias.
relative_position_bias_table`` and the shared ``shared_position_bias.relative_position_
bias_table``; embeddings, ``layernorm_*``, ``lambda_*``, pooler and heads are unchanged.
Both layouts are accepted.
"""
import re

import torch

from .common import REASON_K_BIAS, REASON_REL_INDEX, ConversionError, Mapping

_LAYER = re.compile(r'encoder\.layer\.(\d+)\.(.+)')
_LAYER_V5 = re.compile(r'layers\.(\d+)\.(.+)')
_LAYER_RENAMES = {
    'layernorm_before.weight': 'norm1.weight', 'layernorm_before.bias': 'norm1.bias',
    'layernorm_after.weight': 'norm2.weight', 'layernorm_after.bias': 'norm2.bias',
    'attention.attention.query.bias': 'attn.q_bias',
    'attention.attention.value.bias': 'attn.v_bias',
    'attention.attention.relative_position_bias.relative_position_bias_table':
        'attn.relative_position_bias_table',
    'attention.output.dense.weight': 'attn.proj.weight',
    'attention.output.dense.bias': 'attn.proj.bias',
    'intermediate.dense.weight': 'mlp.fc1.weight', 'intermediate.dense.bias': 'mlp.fc1.bias',
    'output.dense.weight': 'mlp.fc2.weight', 'output.dense.bias': 'mlp.fc2.bias',
    'lambda_1': 'gamma_1', 'lambda_2': 'gamma_2',
}
_LAYER_RENAMES_V5 = {
    'layernorm_before.weight': 'norm1.weight', 'layernorm_before.bias': 'norm1.bias',
    'layernorm_after.weight': 'norm2.weight', 'layernorm_after.bias': 'norm2.bias',
    'attention.q_proj.bias': 'attn.q_bias', 'attention.v_proj.bias': 'attn.v_bias',
    'relative_position_bias.relative_position_bias_table': 'attn.relative_position_bias_table',
    'attention.o_proj.weight': 'attn.proj.weight', 'attention.o_proj.bias': 'attn.proj.bias',
    'mlp.fc1.weight': 'mlp.fc1.weight', 'mlp.fc1.bias': 'mlp.fc1.bias',
    'mlp.fc2.weight': 'mlp.fc2.weight', 'mlp.fc2.bias': 'mlp.fc2.bias',
    'lambda_1': 'gamma_1', 'lambda_2': 'gamma_2',
}
_MODEL_RENAMES = {
    'embeddings.cls_token': 'cls_token',
    'embeddings.mask_token': 'mask_token',
    'embeddings.position_embeddings': 'pos_embed',
    'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
    'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
    'encoder.relative_position_bias.relative_position_bias_table':
        'rel_pos_bias.relative_position_bias_table',
    'shared_position_bias.relative_position_bias_table':                  # transformers 5
        'rel_pos_bias.relative_position_bias_table',
    'layernorm.weight': 'norm.weight', 'layernorm.bias': 'norm.bias',
    'pooler.layernorm.weight': 'fc_norm.weight', 'pooler.layernorm.bias': 'fc_norm.bias',
}
_TASK_RENAMES = {
    'layernorm.weight': 'norm.weight', 'layernorm.bias': 'norm.bias',  # MIM model
    'classifier.weight': 'head.weight', 'classifier.bias': 'head.bias',
    'lm_head.weight': 'lm_head.weight', 'lm_head.bias': 'lm_head.bias',
}
_FPN = re.compile(r'fpn(1\.[013]|2\.0)\.(.+)')
_QKV = ('query', 'key', 'value')


def _cat_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if not q.shape == k.shape == v.shape:
        raise ConversionError(f'query/key/value weights differ in shape: '
                              f'{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}')
    return torch.cat([q, k, v], dim=0)


# Per layout: (layer prefix, renames, rel-pos index name, q/k/v weight and k bias names)
_LAYOUTS = {
    'v4': ('encoder.layer.{}.', _LAYER_RENAMES,
           'attention.attention.relative_position_bias.relative_position_index',
           [f'attention.attention.{n}.weight' for n in _QKV], 'attention.attention.key.bias'),
    'v5': ('layers.{}.', _LAYER_RENAMES_V5, 'relative_position_bias.relative_position_index',
           [f'attention.{n}_proj.weight' for n in 'qkv'], 'attention.k_proj.bias'),
}


def _map_layer(m: Mapping, key: str, prefix: str, idx: str, rest: str, layout: str) -> None:
    dst = f'blocks.{idx}.'
    layer_prefix, renames, rel_index, qkv, k_bias = _LAYOUTS[layout]
    if rest in renames:
        m.place(dst + renames[rest], key)
    elif rest == rel_index:
        m.drop(key, REASON_REL_INDEX)
    elif rest == k_bias:
        if m.sd[key].count_nonzero() != 0:
            raise ConversionError(f'{key} has non-zero values, but BEiT has no key bias')
        m.drop(key, REASON_K_BIAS)
    elif rest == qkv[0]:
        srcs = [prefix + layer_prefix.format(idx) + n for n in qkv]
        if all(s in m.sd for s in srcs):  # otherwise all three stay unplaced
            m.place(dst + 'attn.qkv.weight', *srcs, fn=_cat_qkv)


def map_hf(m: Mapping) -> None:
    """Fill ``m`` from a transformers BEiT state dict."""
    prefix = 'beit.' if any(k.startswith('beit.') for k in m.sd) else ''
    for key in m.sd:
        if prefix and not key.startswith(prefix):
            fpn = _FPN.fullmatch(key)
            head = re.fullmatch(r'(decode_head|auxiliary_head)\.(.+)', key)
            if key in _TASK_RENAMES:
                m.place(_TASK_RENAMES[key], key)
            elif fpn is not None:
                size = '4x' if fpn.group(1)[0] == '1' else '2x'
                m.place(f'neck.upsample_{size}.{fpn.group(1)[2:]}.{fpn.group(2)}', key)
            elif head is not None:
                rest = head.group(2)
                if rest.startswith('classifier.'):
                    rest = 'conv_seg.' + rest[len('classifier.'):]
                m.place(f'{head.group(1)}.{rest}', key)
            continue
        name = key[len(prefix):]
        layer, layout = _LAYER.fullmatch(name), 'v4'
        if layer is None:
            layer, layout = _LAYER_V5.fullmatch(name), 'v5'
        if layer is not None:
            _map_layer(m, key, prefix, layer.group(1), layer.group(2), layout)
        elif name in _MODEL_RENAMES:
            m.place(_MODEL_RENAMES[name], key)
        elif name == 'encoder.relative_position_bias.relative_position_index':
            m.drop(key, REASON_REL_INDEX)
        elif not prefix and name in _TASK_RENAMES and name not in _MODEL_RENAMES:
            m.place(_TASK_RENAMES[name], key)
