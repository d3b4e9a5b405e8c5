"""Exports: mmbeit checkpoints -> timm, Hugging Face transformers and ONNX (docs/export.md).

The inverse direction of the import converters of this package. The key mapping works on a
state dict of one of mmbeit's layouts (docs/contracts.md "Checkpoint layouts": a classifier,
a pretraining algorithm or a segmentor, as the model's ``state_dict()`` or the checkpoint
holds it) plus a *settings* dict that says how the model is built
(:func:`settings_from_model` reads it from a built model). Nothing here imports mmbeit's
models (converters are layer 2); the tool ``tools/model_converters/export_checkpoint.py``
builds the model from its config with ``mmbeit.apis.init_model`` and calls this module.

Targets:

* ``timm``: the state dict of timm's ``Beit`` (``timm/models/beit.py``: same names as
  unilm and mmbeit's backbone, ``head`` for the classifier), the registered model name and
  the keyword arguments that build the matching model, and timm's hub ``config.json``
  (``timm.create_model('local-dir:FOLDER', pretrained=True)`` reads it).
* ``hf``: ``BeitForImageClassification`` (classifier), ``BeitModel`` (backbone) or
  ``BeitForSemanticSegmentation`` (UperNet segmentor, when the computation matches exactly,
  see :func:`hf_segmentation_blockers`) in the layout of the checkpoints on the Hugging Face
  hub (``beit.encoder.layer.i.attention.attention.query``..., the names of transformers 4.x
  and of HF's own ``convert_beit_unilm_to_pytorch.py``), which transformers 4.x loads as it
  is and 5.x through its checkpoint conversion mapping; plus a ``config.json``.
* ``onnx``: :func:`export_onnx` traces a built classifier or segmentor.

Every key of the input is placed, or dropped with a reason (a pretraining-only part, a head
a backbone export has no room for, the preprocessor's normalisation constants); any other
key is an :class:`ExportError` naming all of them, as the import converters do.
"""
import json
import math
import os
import os.path as osp
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from mmbeit.checkpoint import atomic_output

from .common import AGG_KEY, BACKBONE_KEY, ConversionError

__all__ = ['TARGETS', 'EXPORT_KINDS', 'ExportError', 'ExportResult', 'settings_from_model',
           'export_state_dict', 'hf_segmentation_blockers', 'timm_model_args',
           'write_export', 'export_onnx', 'onnx_graph']

TARGETS = ('timm', 'hf', 'onnx')
EXPORT_KINDS = ('classifier', 'backbone', 'segmentor')
WEIGHTS_SAFETENSORS = 'model.safetensors'
WEIGHTS_TORCH = 'pytorch_model.bin'


class ExportError(ConversionError):
    """A model or state dict that cannot be exported as asked (a ``ValueError``)."""


@dataclass
class ExportResult:
    """What :func:`export_state_dict` produced.

    ``state_dict`` is in the target's names; ``config`` is, for timm,
    ``{'model_name', 'kwargs', 'hub_config'}`` and, for HF, the ``config.json`` dict.
    ``dropped`` maps our keys to why they are not exported; ``filled`` maps target keys
    that have no source to what they hold; ``adapted`` says what was changed on the way.
    """
    to: str
    kind: str
    state_dict: 'OrderedDict[str, torch.Tensor]'
    config: Dict[str, Any]
    load_code: str
    dropped: Dict[str, str] = field(default_factory=dict)
    filled: Dict[str, str] = field(default_factory=dict)
    adapted: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f'exported a {self.kind} to {self.to}: {len(self.state_dict)} tensors']
        lines += [f'  adapted  {a}' for a in self.adapted]
        lines += [f'  filled   {k}: {r}' for k, r in _group(self.filled)]
        lines += [f'  dropped  {k}: {r}' for k, r in _group(self.dropped)]
        return '\n'.join(lines)


def _group(reasons: Mapping[str, str]) -> List[Tuple[str, str]]:
    """(keys, reason) rows with the keys of one reason folded into prefix patterns."""
    by_reason: Dict[str, List[str]] = OrderedDict()
    for key in sorted(reasons):
        by_reason.setdefault(reasons[key], []).append(key)
    rows = []
    for reason, keys in by_reason.items():
        if len(keys) == 1:
            rows.append((keys[0], reason))
            continue
        common = osp.commonprefix(keys)
        common = common[:common.rfind('.') + 1] if '.' in common else ''
        rows.append((f'{common}* ({len(keys)} keys)' if common else str(keys), reason))
    return rows


# ----------------------------------------------------------------------------- settings

def _attr_type(cfg: Any) -> Optional[str]:
    if cfg is None:
        return None
    kind = cfg.get('type') if isinstance(cfg, Mapping) else None
    return kind.rsplit('.', 1)[-1] if isinstance(kind, str) else getattr(kind, '__name__', None)


def _head_settings(head: Any) -> Dict[str, Any]:
    """What the HF comparison needs of an mmseg decode head (duck-typed)."""
    conv = None
    convs = getattr(head, 'convs', None)
    if isinstance(convs, torch.nn.Sequential) and len(convs):
        conv = getattr(convs[0], 'conv', None)
    pool_scales = getattr(getattr(head, 'psp_modules', None), 'pool_scales', None)
    loss = getattr(head, 'loss_decode', None)
    return dict(
        type=type(head).__name__,
        in_index=getattr(head, 'in_index', None),
        in_channels=getattr(head, 'in_channels', None),
        channels=getattr(head, 'channels', None),
        num_classes=getattr(head, 'num_classes', None),
        align_corners=getattr(head, 'align_corners', None),
        input_transform=getattr(head, 'input_transform', None),
        norm=_attr_type(getattr(head, 'norm_cfg', None)),
        act=_attr_type(getattr(head, 'act_cfg', None)),
        pool_scales=list(pool_scales) if pool_scales is not None else None,
        num_convs=getattr(head, 'num_convs', None),
        concat_input=getattr(head, 'concat_input', None),
        kernel_size=getattr(head, 'kernel_size', None),
        dilation=conv.dilation[0] if conv is not None else None,
        loss_weight=getattr(loss, 'loss_weight', None),
    )


def settings_from_model(model: torch.nn.Module) -> Dict[str, Any]:
    """The settings dict of a built mmbeit model (a classifier, a pretraining algorithm, a
    segmentor, or a bare ``BEiTViT``), read from its modules.

    Keys: ``model_kind`` ('classifier' | 'pretrain' | 'segmentor' | 'backbone'),
    ``backbone`` (embed_dims, num_layers, num_heads, feedforward_channels, img_size (h, w),
    patch_size, in_channels, use_abs_pos_emb, rel_pos_bias, qv_bias, layer_scale, norm_eps,
    final_norm, out_type, use_mask_token, out_indices, drop_path_rate), ``num_classes``
    (classifier), ``classes`` (names or None), ``mean`` / ``std`` (0-255 units) and
    ``channel_order`` of the data preprocessor, and for a segmentor ``neck``,
    ``decode_head``, ``auxiliary_head`` (None or a dict).
    """
    backbone = getattr(model, 'backbone', model)
    needed = ('blocks', 'patch_embed', 'rel_pos_mode', 'out_type', 'embed_dims')
    if not all(hasattr(backbone, a) for a in needed):
        raise ExportError(f'{type(model).__name__} has no mmbeit BEiTViT backbone; the '
                          'export handles BEiTViT classifiers, pretraining models and '
                          'segmentors')
    blk = backbone.blocks[0]
    b = dict(
        embed_dims=backbone.embed_dims, num_layers=backbone.num_layers,
        num_heads=backbone.num_heads, feedforward_channels=blk.mlp.fc1.out_features,
        img_size=tuple(int(s) for s in backbone.img_size), patch_size=backbone.patch_size,
        in_channels=backbone.patch_embed.proj.in_channels,
        use_abs_pos_emb=backbone.pos_embed is not None, rel_pos_bias=backbone.rel_pos_mode,
        qv_bias=blk.attn.q_bias is not None, layer_scale=blk.gamma_1 is not None,
        norm_eps=blk.norm1.eps, final_norm=backbone.norm is not None,
        out_type=backbone.out_type, use_mask_token=backbone.mask_token is not None,
        out_indices=list(backbone.out_indices),
        drop_path_rate=round(float(backbone.blocks[-1].drop_path.drop_prob), 6))
    settings: Dict[str, Any] = dict(backbone=b, num_classes=None, classes=None)
    head = getattr(model, 'head', None)
    if hasattr(model, 'decode_head'):
        settings['model_kind'] = 'segmentor'
        neck = getattr(model, 'neck', None)
        settings['neck'] = None if neck is None else dict(
            type=type(neck).__name__, rescales=list(getattr(neck, 'rescales', []) or []))
        settings['decode_head'] = _head_settings(model.decode_head)
        aux = getattr(model, 'auxiliary_head', None)
        settings['auxiliary_head'] = (
            None if aux is None else
            [_head_settings(h) for h in aux] if isinstance(aux, torch.nn.ModuleList)
            else _head_settings(aux))
        settings['num_classes'] = settings['decode_head']['num_classes']
    elif isinstance(getattr(head, 'fc', None), torch.nn.Linear):
        settings['model_kind'] = 'classifier'
        settings['num_classes'] = head.fc.out_features
    elif hasattr(model, 'target_generator') or hasattr(head, 'lm_head'):
        settings['model_kind'] = 'pretrain'
    elif model is backbone:
        settings['model_kind'] = 'backbone'
    else:
        raise ExportError(f'cannot tell what kind of model {type(model).__name__} is (no '
                          'classifier head.fc, no decode_head, no MIM head)')
    meta = getattr(model, 'dataset_meta', None) or {}
    if meta.get('classes'):
        settings['classes'] = [str(c) for c in meta['classes']]
    dp = getattr(model, 'data_preprocessor', None)
    mean, std = getattr(dp, 'mean', None), getattr(dp, 'std', None)
    if torch.is_tensor(mean) and torch.is_tensor(std):
        settings['mean'] = [float(f'{v:.6g}') for v in mean.flatten().tolist()]
        settings['std'] = [float(f'{v:.6g}') for v in std.flatten().tolist()]
        flag = getattr(dp, 'to_rgb', getattr(dp, 'channel_conversion', None))
        # images are decoded BGR by mmcv and flipped by the preprocessor when the flag is
        # set; the pretraining pipeline decodes RGB itself
        settings['channel_order'] = 'RGB' if flag is None or flag else 'BGR'
    return settings


# ----------------------------------------------------------------------------- keys

def _backbone_keys(b: Mapping[str, Any]) -> List[str]:
    """The keys of a BEiTViT built with settings ``b`` (docs/contracts.md)."""
    keys = ['patch_embed.proj.weight', 'patch_embed.proj.bias', 'cls_token']
    if b['use_mask_token']:
        keys.append('mask_token')
    if b['use_abs_pos_emb']:
        keys.append('pos_embed')
    if b['rel_pos_bias'] == 'shared':
        keys.append('rel_pos_bias.relative_position_bias_table')
    for i in range(b['num_layers']):
        p = f'blocks.{i}.'
        keys += [p + 'norm1.weight', p + 'norm1.bias', p + 'attn.qkv.weight']
        if b['qv_bias']:
            keys += [p + 'attn.q_bias', p + 'attn.v_bias']
        if b['rel_pos_bias'] == 'per_layer':
            keys.append(p + 'attn.relative_position_bias_table')
        keys += [p + n for n in ('attn.proj.weight', 'attn.proj.bias', 'norm2.weight',
                                 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias',
                                 'mlp.fc2.weight', 'mlp.fc2.bias')]
        if b['layer_scale']:
            keys += [p + 'gamma_1', p + 'gamma_2']
    if b['final_norm']:
        keys += ['norm.weight', 'norm.bias']
    if b['out_type'] == 'avg_featmap':
        keys += ['fc_norm.weight', 'fc_norm.bias']
    return keys


REASON_MASK_TOKEN = ("mask token of masked-image-modeling pretraining: timm's Beit has no "
                     'place for it')
REASON_MIM_HEAD = 'MIM head (predicts tokenizer ids): used only in pretraining'
REASON_AGGREGATION = 'BEiT v2 patch-aggregation blocks: used only in pretraining'
REASON_PREPROCESSOR = ('normalisation constants of the data preprocessor: not weights; '
                       'written to export.json (mean / std)')
REASON_CLS_HEAD = 'classifier head: a backbone export has none'
REASON_SEG_PARTS = 'segmentation neck / heads: a backbone export has none'

_SEG_NECK = re.compile(r'neck\.(upsample_4x\.[013]|upsample_2x\.0)\.'
                       r'(weight|bias|running_mean|running_var|num_batches_tracked)')
_CONV_BN = r'(conv\.weight|bn\.(weight|bias|running_mean|running_var|num_batches_tracked))'
_UPER_KEY = re.compile(r'decode_head\.(psp_modules\.\d+\.1|bottleneck|fpn_bottleneck|'
                       r'lateral_convs\.\d+|fpn_convs\.\d+)\.' + _CONV_BN
                       + r'|decode_head\.conv_seg\.(weight|bias)')
_FCN_KEY = re.compile(r'auxiliary_head\.(convs\.\d+|conv_cat)\.' + _CONV_BN
                      + r'|auxiliary_head\.conv_seg\.(weight|bias)')


def _split(state_dict: Mapping[str, torch.Tensor], settings: Mapping[str, Any], kind: str,
           to: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, str]]:
    """(backbone entries without prefix, other placed entries, dropped {key: reason});
    raises for keys that fit nowhere and for backbone keys the settings do not imply."""
    backbone, rest, dropped, unplaced = OrderedDict(), OrderedDict(), {}, []
    model_kind = settings.get('model_kind')
    for key, value in state_dict.items():
        if key.startswith('backbone.') or model_kind == 'backbone':
            name = key[len('backbone.'):] if key.startswith('backbone.') else key
            if BACKBONE_KEY.fullmatch(name):
                backbone[name] = value
            else:
                unplaced.append(key)
        elif key in ('head.fc.weight', 'head.fc.bias'):
            if kind == 'classifier':
                rest[key] = value
            else:
                dropped[key] = REASON_CLS_HEAD
        elif key in ('head.lm_head.weight', 'head.lm_head.bias'):
            dropped[key] = REASON_MIM_HEAD
        elif key.startswith('neck.') and AGG_KEY.fullmatch(key[len('neck.'):]):
            dropped[key] = REASON_AGGREGATION
        elif key.startswith('data_preprocessor.'):
            dropped[key] = REASON_PREPROCESSOR
        elif _SEG_NECK.fullmatch(key) or key.startswith(('decode_head.', 'auxiliary_head.')):
            if kind != 'segmentor':
                dropped[key] = REASON_SEG_PARTS
            elif _SEG_NECK.fullmatch(key) or _UPER_KEY.fullmatch(key) or \
                    _FCN_KEY.fullmatch(key):
                rest[key] = value
            else:
                unplaced.append(key)
        else:
            unplaced.append(key)
    if unplaced:
        raise ExportError(
            f'--to {to} --kind {kind}: {len(unplaced)} key(s) could not be placed: '
            f'{sorted(unplaced)}. The export knows the layouts of docs/contracts.md '
            '(BEiTViT backbone, LinearClsHead, MIM head, BEiT v2 neck, Feature2Pyramid + '
            'UPerHead + FCNHead); other parts have no counterpart in the target')
    expected = _backbone_keys(settings['backbone'])
    missing = [k for k in expected if k not in backbone]
    extra = sorted(set(backbone) - set(expected))
    if missing or extra:
        raise ExportError(
            f'the backbone keys do not match the model settings {_describe(settings)}: '
            f'missing {["backbone." + k for k in missing]}, not expected '
            f'{["backbone." + k for k in extra]}; build the settings from the model the '
            'checkpoint was trained with (its config)')
    if kind == 'classifier' and 'head.fc.weight' not in rest:
        raise ExportError(f'--kind classifier needs a classifier head (head.fc.weight); '
                          f'this is a {model_kind} checkpoint: use --kind backbone')
    if kind == 'segmentor' and not any(k.startswith('decode_head.') for k in rest):
        raise ExportError(f'--kind segmentor needs a decode_head; this is a {model_kind} '
                          'checkpoint')
    return backbone, rest, dropped


def _describe(settings: Mapping[str, Any]) -> str:
    b = settings['backbone']
    return (f"(BEiTViT {b['embed_dims']}x{b['num_layers']}, {b['num_heads']} heads, "
            f"img_size {tuple(b['img_size'])}, patch {b['patch_size']}, rel_pos_bias="
            f"{b['rel_pos_bias']!r}, out_type={b['out_type']!r}, final_norm="
            f"{b['final_norm']})")


def _pooling(b: Mapping[str, Any], kind: str, to: str) -> str:
    """'avg' (fc_norm on the mean patch token) or 'token' (final norm, cls token): the
    only two poolings timm's and HF's BEiT models have."""
    last = b['num_layers'] - 1
    if list(b['out_indices']) != [last]:
        raise ExportError(
            f"--to {to}: the backbone returns blocks {b['out_indices']}, but timm's and "
            f'HF\'s BEiT pool the last block ({last}) only; a probe on an intermediate '
            'block has no counterpart there')
    if b['out_type'] == 'avg_featmap' and not b['final_norm']:
        return 'avg'
    if b['final_norm'] and b['out_type'] in ('cls_token', 'raw'):
        return 'token'
    why = ('both a final norm and fc_norm' if b['final_norm'] else
           f"out_type={b['out_type']!r} without a final norm")
    raise ExportError(
        f"--to {to} --kind {kind}: this backbone has {why}; timm's and HF's BEiT apply "
        'exactly one of them (fc_norm after mean pooling, or the final norm before cls '
        'pooling), so its features have no counterpart there')


def _expand(backbone: Dict[str, torch.Tensor], b: Mapping[str, Any],
            adapted: List[str]) -> Dict[str, torch.Tensor]:
    """Shared relative position table -> one copy per block (exact: every block adds the
    same bias)."""
    out = OrderedDict()
    table = backbone['rel_pos_bias.relative_position_bias_table']
    for k, v in backbone.items():
        if k == 'rel_pos_bias.relative_position_bias_table':
            continue
        out[k] = v
        m = re.fullmatch(r'blocks\.(\d+)\.attn\.qkv\.weight', k)
        if m:
            out[f'blocks.{m.group(1)}.attn.relative_position_bias_table'] = table.clone()
    adapted.append(f"rel_pos_bias.relative_position_bias_table: copied into the "
                   f"{b['num_layers']} blocks (blocks.i.attn.relative_position_bias_table)")
    return out


# ----------------------------------------------------------------------------- timm

# timm's Beit defaults and its registered BEiT models (timm/models/beit.py, timm 1.0):
# the constructor arguments each name fixes.
_TIMM_DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000,
                      global_pool='avg', embed_dim=768, depth=12, num_heads=12,
                      qkv_bias=True, mlp_ratio=4.0, init_values=None, use_abs_pos_emb=True,
                      use_rel_pos_bias=False, use_shared_rel_pos_bias=False, use_fc_norm=None)
_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, use_abs_pos_emb=False,
          use_rel_pos_bias=True)
_L = dict(_B, embed_dim=1024, depth=24, num_heads=16)
TIMM_MODELS = OrderedDict([
    ('beitv2_base_patch16_224', dict(_B, init_values=1e-5)),
    ('beitv2_large_patch16_224', dict(_L, init_values=1e-5)),
    ('beit_base_patch16_224', dict(_B, init_values=0.1)),
    ('beit_base_patch16_384', dict(_B, img_size=384, init_values=0.1)),
    ('beit_large_patch16_224', dict(_L, init_values=1e-5)),
    ('beit_large_patch16_384', dict(_L, img_size=384, init_values=1e-5)),
    ('beit_large_patch16_512', dict(_L, img_size=512, init_values=1e-5)),
])
_TIMM_ARG_ORDER = ('num_classes', 'global_pool', 'img_size', 'patch_size', 'in_chans',
                   'embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'qkv_bias', 'init_values',
                   'use_abs_pos_emb', 'use_rel_pos_bias', 'use_shared_rel_pos_bias',
                   'use_fc_norm')


def _timm_wanted(b: Mapping[str, Any], num_classes: int, pool: str,
                 rel: Optional[str]) -> Dict[str, Any]:
    d = b['embed_dims']
    ratio = b['feedforward_channels'] / d
    if int(d * ratio) != b['feedforward_channels']:
        raise ExportError(f"--to timm: timm builds the MLP as int(embed_dim * mlp_ratio); "
                          f"no ratio gives {b['feedforward_channels']} for {d}")
    h, w = b['img_size']
    return dict(num_classes=num_classes, global_pool=pool, img_size=h if h == w else [h, w],
                patch_size=b['patch_size'], in_chans=b['in_channels'], embed_dim=d,
                depth=b['num_layers'], num_heads=b['num_heads'],
                mlp_ratio=float(ratio), qkv_bias=b['qv_bias'],
                # timm.create_model drops None kwargs: 0 is how to say "no LayerScale"
                init_values='layer_scale' if b['layer_scale'] else 0.0,
                use_abs_pos_emb=b['use_abs_pos_emb'], use_rel_pos_bias=rel == 'per_layer',
                use_shared_rel_pos_bias=rel == 'shared', use_fc_norm=None)


def _timm_kwargs(name: str, wanted: Mapping[str, Any]) -> Dict[str, Any]:
    base = dict(_TIMM_DEFAULTS, **TIMM_MODELS[name])
    kwargs = OrderedDict()
    for key in _TIMM_ARG_ORDER:
        want = wanted[key]
        if key == 'init_values' and want == 'layer_scale':
            # any positive value builds the LayerScale vectors; the weights overwrite them
            want = base['init_values'] if base['init_values'] else 0.1
        if key == 'num_classes' or want != base[key]:
            kwargs[key] = want
    return kwargs


def timm_model_args(settings: Mapping[str, Any], kind: str, timm_name: Optional[str] = None,
                    expand_rel_pos: bool = False) -> Tuple[str, Dict[str, Any]]:
    """(registered timm model name, kwargs of ``timm.create_model``) that build the
    timm model of this export. Without ``timm_name`` the name that needs the fewest
    kwargs is chosen (BEiT v2 names first)."""
    b = settings['backbone']
    pool = _pooling(b, kind, 'timm')
    if b['norm_eps'] != 1e-6:
        raise ExportError(f"--to timm: timm's BEiT LayerNorms use eps 1e-6, this model "
                          f"{b['norm_eps']}")
    rel = 'per_layer' if expand_rel_pos and b['rel_pos_bias'] == 'shared' else \
        b['rel_pos_bias']
    num_classes = settings['num_classes'] if kind == 'classifier' else 0
    wanted = _timm_wanted(b, num_classes, pool, rel)
    if timm_name is not None:
        if timm_name not in TIMM_MODELS:
            raise ExportError(f'unknown timm BEiT model {timm_name!r}; choose from '
                              f'{list(TIMM_MODELS)}')
        return timm_name, _timm_kwargs(timm_name, wanted)
    best = min(TIMM_MODELS, key=lambda n: len(_timm_kwargs(n, wanted)))
    return best, _timm_kwargs(best, wanted)


def _call(func: str, first: str, kwargs: Mapping[str, Any]) -> str:
    args = [first] + [f'{k}={v!r}' for k, v in kwargs.items()]
    return f'{func}({", ".join(args)})'


def _to_timm(backbone, rest, settings, kind, timm_name, expand_rel_pos, dropped, adapted):
    b = settings['backbone']
    name, kwargs = timm_model_args(settings, kind, timm_name, expand_rel_pos)
    if expand_rel_pos and b['rel_pos_bias'] == 'shared':
        backbone = _expand(backbone, b, adapted)
    out = OrderedDict()
    for k, v in backbone.items():
        if k == 'mask_token':
            dropped['backbone.mask_token'] = REASON_MASK_TOKEN
        else:
            out[k] = v
    if kind == 'classifier':
        out['head.weight'], out['head.bias'] = rest['head.fc.weight'], rest['head.fc.bias']
    h, w = b['img_size']
    mean = [round(m / 255, 6) for m in settings.get('mean') or (123.675, 116.28, 103.53)]
    std = [round(s / 255, 6) for s in settings.get('std') or (58.395, 57.12, 57.375)]
    hub = OrderedDict(
        architecture=name, num_classes=kwargs['num_classes'], num_features=b['embed_dims'],
        global_pool=kwargs.get('global_pool', 'avg'), model_args=dict(kwargs),
        pretrained_cfg=OrderedDict(
            custom_load=False, input_size=[b['in_channels'], h, w], fixed_input_size=True,
            interpolation='bicubic', crop_pct=1.0, crop_mode='center', mean=mean, std=std,
            num_classes=kwargs['num_classes'], pool_size=None, first_conv='patch_embed.proj',
            classifier='head'))
    if kind == 'classifier' and settings.get('classes'):
        hub['label_names'] = list(settings['classes'])
    code = ('import safetensors.torch\nimport timm\n'
            "model = timm.create_model('local-dir:FOLDER', pretrained=True)\n"
            '# or, from the weights file alone:\n'
            f"model = {_call('timm.create_model', repr(name), kwargs)}\n"
            'model.load_state_dict(safetensors.torch.load_file(\'FOLDER/model.safetensors\'))')
    return out, dict(model_name=name, kwargs=dict(kwargs), hub_config=hub), code


# ----------------------------------------------------------------------------- HF

_HF_BLOCK = OrderedDict([
    ('norm1.', 'layernorm_before.'), ('norm2.', 'layernorm_after.'),
    ('attn.q_bias', 'attention.attention.query.bias'),
    ('attn.v_bias', 'attention.attention.value.bias'),
    ('attn.relative_position_bias_table',
     'attention.attention.relative_position_bias.relative_position_bias_table'),
    ('attn.proj.', 'attention.output.dense.'), ('mlp.fc1.', 'intermediate.dense.'),
    ('mlp.fc2.', 'output.dense.'), ('gamma_1', 'lambda_1'), ('gamma_2', 'lambda_2'),
])
_HF_TOP = {
    'cls_token': 'embeddings.cls_token', 'mask_token': 'embeddings.mask_token',
    'pos_embed': 'embeddings.position_embeddings',
    'patch_embed.proj.weight': 'embeddings.patch_embeddings.projection.weight',
    'patch_embed.proj.bias': 'embeddings.patch_embeddings.projection.bias',
    'rel_pos_bias.relative_position_bias_table':
        'encoder.relative_position_bias.relative_position_bias_table',
    'norm.weight': 'layernorm.weight', 'norm.bias': 'layernorm.bias',
    'fc_norm.weight': 'pooler.layernorm.weight', 'fc_norm.bias': 'pooler.layernorm.bias',
}


def _hf_backbone(backbone, b, prefix, out, filled) -> None:
    d = b['embed_dims']
    for k, v in backbone.items():
        m = re.fullmatch(r'blocks\.(\d+)\.(.+)', k)
        if m is None:
            out[prefix + _HF_TOP[k]] = v
            continue
        pre = f'{prefix}encoder.layer.{m.group(1)}.'
        rest = m.group(2)
        if rest == 'attn.qkv.weight':
            for part, t in zip(('query', 'key', 'value'), v.chunk(3, dim=0)):
                out[f'{pre}attention.attention.{part}.weight'] = t.clone()
            if not b['qv_bias']:  # HF's query / value Linears always have a bias
                for part in ('query', 'value'):
                    key = f'{pre}attention.attention.{part}.bias'
                    out[key] = v.new_zeros(d)
                    filled[key] = 'zeros: this model has no q / v bias (qv_bias=False)'
            continue
        for old, new in _HF_BLOCK.items():
            if rest.startswith(old):
                out[pre + new + rest[len(old):]] = v
                break


def hf_segmentation_blockers(settings: Mapping[str, Any]) -> List[str]:
    """Why transformers' ``BeitForSemanticSegmentation`` cannot compute what this mmseg
    UperNet computes (empty when it can). Compared with transformers 5.24's
    ``modeling_beit.py``: its pyramid (``BeitFPNNeck``) is fixed to mmseg's
    ``Feature2Pyramid`` with rescales (4, 2, 1, 0.5), BN and GELU; its ``BeitUperHead`` is
    mmseg's UPerHead with ``channels = hidden_size`` on four ``hidden_size`` maps
    (conv-BN-ReLU layers, bilinear resizes with align_corners=False); its ``BeitFCNHead``
    reads map 2 with 3x3 convs; and it feeds map j from ``hidden_states[out_indices[j] -
    1]``, where ``hidden_states[0]`` is the patch embedding, i.e. from block
    ``out_indices[j] - 2`` (0-based): the last block is out of its reach."""
    b = settings['backbone']
    d, depth = b['embed_dims'], b['num_layers']
    why = []
    if b['out_type'] != 'featmap':
        why.append(f"the backbone's out_type is {b['out_type']!r}, HF reads block outputs "
                   "as feature maps ('featmap')")
    idx = list(b['out_indices'])
    if len(idx) != 4:
        why.append(f'the backbone returns {len(idx)} maps; HF\'s neck takes exactly 4')
    elif max(idx) > depth - 2:
        why.append(
            f'the backbone feeds blocks {idx} (0-based) to the neck; transformers feeds map '
            f'j from hidden_states[out_indices[j] - 1] (hidden_states[0] is the patch '
            f'embedding, out_indices at most {depth}), which is block out_indices[j] - 2, '
            f'so blocks above {depth - 2} (this model uses {[i for i in idx if i > depth - 2]}'
            f') cannot be selected: the same weights would run on other features')
    neck = settings.get('neck') or {}
    if neck.get('type') != 'Feature2Pyramid' or list(neck.get('rescales') or []) != \
            [4, 2, 1, 0.5]:
        why.append(f"the neck is {neck.get('type')} with rescales {neck.get('rescales')}; "
                   "HF's fpn1-fpn4 are fixed to Feature2Pyramid's rescales [4, 2, 1, 0.5] "
                   '(ConvT-BN-GELU-ConvT, ConvT, identity, max-pool)')
    dh = settings.get('decode_head') or {}

    def conv_layers(head, name):
        if head.get('norm') not in ('BN', 'SyncBN'):
            why.append(f"{name} uses norm {head.get('norm')!r}; HF's conv layers are "
                       'conv (no bias) -> BatchNorm -> activation')
        if head.get('act') != 'ReLU':
            why.append(f"{name} uses activation {head.get('act')!r}; HF's heads use ReLU")
        if head.get('align_corners'):
            why.append(f'{name} resizes with align_corners=True; HF resizes with False')

    if dh.get('type') != 'UPerHead':
        why.append(f"the decode head is {dh.get('type')}; HF has UPerHead only")
    else:
        if list(dh.get('in_index') or []) != [0, 1, 2, 3]:
            why.append(f"the decode head reads maps {dh.get('in_index')}; HF's reads [0, 1, "
                       '2, 3]')
        if dh.get('channels') != d or list(dh.get('in_channels') or []) != [d] * 4:
            why.append(f"the decode head has {dh.get('channels')} channels on inputs "
                       f"{dh.get('in_channels')}; HF's BeitUperHead has hidden_size ({d}) "
                       f'channels on four {d}-channel maps')
        conv_layers(dh, 'the decode head')
    aux = settings.get('auxiliary_head')
    if isinstance(aux, list):
        why.append(f'{len(aux)} auxiliary heads; HF has at most one')
    elif aux is not None:
        if aux.get('type') != 'FCNHead':
            why.append(f"the auxiliary head is {aux.get('type')}; HF has FCNHead only")
        else:
            if aux.get('in_index') != 2 or aux.get('in_channels') != d:
                why.append(f"the auxiliary head reads map {aux.get('in_index')} with "
                           f"{aux.get('in_channels')} channels; HF's reads map 2 "
                           f'({d} channels)')
            if aux.get('kernel_size') != 3 or aux.get('dilation') not in (1, None):
                why.append(f"the auxiliary head's convs are {aux.get('kernel_size')}x"
                           f"{aux.get('kernel_size')} with dilation {aux.get('dilation')}; "
                           "HF's are 3x3, dilation 1")
            if aux.get('num_classes') != dh.get('num_classes'):
                why.append('the auxiliary head predicts another number of classes; HF uses '
                           'num_labels for both heads')
            conv_layers(aux, 'the auxiliary head')
    return why


def _hf_config(settings, kind, rel, pool) -> Dict[str, Any]:
    b = settings['backbone']
    h, w = b['img_size']
    arch = {'classifier': 'BeitForImageClassification', 'backbone': 'BeitModel',
            'segmentor': 'BeitForSemanticSegmentation'}[kind]
    cfg = OrderedDict(
        architectures=[arch], model_type='beit', hidden_size=b['embed_dims'],
        num_hidden_layers=b['num_layers'], num_attention_heads=b['num_heads'],
        intermediate_size=b['feedforward_channels'], hidden_act='gelu',
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02,
        layer_norm_eps=b['norm_eps'], image_size=h if h == w else [h, w],
        patch_size=b['patch_size'], num_channels=b['in_channels'],
        use_mask_token=b['use_mask_token'],
        use_absolute_position_embeddings=b['use_abs_pos_emb'],
        use_relative_position_bias=rel == 'per_layer',
        use_shared_relative_position_bias=rel == 'shared',
        layer_scale_init_value=0.1 if b['layer_scale'] else 0.0,
        drop_path_rate=b['drop_path_rate'], use_mean_pooling=pool == 'avg')
    if kind in ('classifier', 'segmentor'):
        n = settings['num_classes']
        names = settings.get('classes') or [f'LABEL_{i}' for i in range(n)]
        if len(names) != n:
            names = [f'LABEL_{i}' for i in range(n)]
        cfg['id2label'] = {str(i): name for i, name in enumerate(names)}
        cfg['label2id'] = {name: i for i, name in enumerate(names)}
    if kind == 'segmentor':
        dh, aux = settings['decode_head'], settings.get('auxiliary_head')
        cfg.update(out_indices=[i + 2 for i in b['out_indices']],
                   pool_scales=list(dh['pool_scales']), use_auxiliary_head=aux is not None,
                   semantic_loss_ignore_index=255)
        if aux is not None:
            cfg.update(auxiliary_channels=aux['channels'], auxiliary_num_convs=aux['num_convs'],
                       auxiliary_concat_input=bool(aux['concat_input']),
                       auxiliary_loss_weight=aux['loss_weight'] if aux['loss_weight']
                       is not None else 0.4)
    return cfg


def _to_hf(backbone, rest, settings, kind, expand_rel_pos, adapted, filled):
    b = settings['backbone']
    h, w = b['img_size']
    if h != w:
        # transformers 5.24, modeling_beit.py: BeitRelativePositionBias reshapes the table
        # as (2w-1) x (2h-1) and resamples it to (2h-1) x (2w-1); BeitEmbeddings
        # interpolates the absolute position embedding whenever height != width
        raise ExportError(
            f"--to hf: this model's input is {h}x{w}; transformers' BEiT computes a "
            'non-square input differently from unilm / timm / mmbeit (it reads the '
            'relative position table as width x height and resamples it, and resizes '
            'absolute position embeddings for any non-square input), so its outputs would '
            'differ. Export to timm or ONNX instead')
    if kind == 'segmentor':
        blockers = hf_segmentation_blockers(settings)
        if blockers:
            raise ExportError(
                "--to hf --kind segmentor: transformers' BeitForSemanticSegmentation does "
                'not compute what this model computes, so it is not exported '
                '(docs/export.md):\n  - ' + '\n  - '.join(blockers)
                + '\nExport the segmentor to ONNX instead (--to onnx), or its backbone '
                '(--kind backbone) where it has a final norm')
        pool = 'token' if b['final_norm'] else 'avg'  # pooling is unused by segmentation
    else:
        pool = _pooling(b, kind, 'hf')
    rel = 'per_layer' if expand_rel_pos and b['rel_pos_bias'] == 'shared' else \
        b['rel_pos_bias']
    if rel != b['rel_pos_bias']:
        backbone = _expand(backbone, b, adapted)
    out = OrderedDict()
    _hf_backbone(backbone, b, '' if kind == 'backbone' else 'beit.', out, filled)
    if kind == 'classifier':
        out['classifier.weight'] = rest['head.fc.weight']
        out['classifier.bias'] = rest['head.fc.bias']
    elif kind == 'segmentor':
        for k, v in rest.items():
            k = re.sub(r'^neck\.upsample_4x\.', 'fpn1.', k)
            k = re.sub(r'^neck\.upsample_2x\.', 'fpn2.', k)
            k = re.sub(r'^(decode_head|auxiliary_head)\.conv_seg\.', r'\1.classifier.', k)
            out[k] = v
    cfg = _hf_config(settings, kind, rel, pool)
    arch = cfg['architectures'][0]
    code = ('import transformers\n'
            f"model = transformers.{arch}.from_pretrained('FOLDER')")
    return out, cfg, code


# ----------------------------------------------------------------------------- driver

def export_state_dict(state_dict: Mapping[str, torch.Tensor], settings: Mapping[str, Any],
                      to: str, kind: Optional[str] = None, timm_name: Optional[str] = None,
                      expand_rel_pos: bool = False) -> ExportResult:
    """Map an mmbeit state dict onto timm's or HF's names.

    Args:
        state_dict: the model's ``state_dict()`` or the checkpoint's (a classifier,
            pretraining or segmentor layout; a bare backbone when ``settings``' model_kind
            is 'backbone').
        settings: :func:`settings_from_model` of the model built from the checkpoint's
            config.
        to: 'timm' or 'hf' (ONNX exports a built model: :func:`export_onnx`).
        kind: 'classifier', 'backbone' or 'segmentor'; default: the model's own
            (a pretraining model exports its backbone).
        timm_name: timm model name to build (see ``TIMM_MODELS``); default: the one
            that needs the fewest keyword arguments.
        expand_rel_pos: copy a shared relative position table into every block (exact),
            for a model with per-layer tables (timm's and HF's defaults, what unilm
            fine-tunes).

    Raises:
        ExportError: a key that fits nowhere (all named), settings that do not match the
            keys, or a model the target cannot represent (the reason named).
    """
    if to not in ('timm', 'hf'):
        raise ExportError(f'export_state_dict exports to timm or hf, not {to!r} (ONNX: '
                          'export_onnx)')
    model_kind = settings.get('model_kind')
    kind = kind or ('backbone' if model_kind == 'pretrain' else model_kind)
    if kind not in EXPORT_KINDS:
        raise ExportError(f'unknown kind {kind!r}; choose from {list(EXPORT_KINDS)}')
    if kind == 'segmentor' and to == 'timm':
        raise ExportError('--to timm: timm has no segmentation models; export the segmentor '
                          'with --to onnx (or --to hf), or its backbone with --kind backbone')
    backbone, rest, dropped = _split(state_dict, settings, kind, to)
    adapted: List[str] = []
    filled: Dict[str, str] = {}
    if to == 'timm':
        out, config, code = _to_timm(backbone, rest, settings, kind, timm_name,
                                     expand_rel_pos, dropped, adapted)
    else:
        out, config, code = _to_hf(backbone, rest, settings, kind, expand_rel_pos, adapted,
                                   filled)
    return ExportResult(to=to, kind=kind, state_dict=out, config=config, load_code=code,
                        dropped=dict(sorted(dropped.items())), filled=filled,
                        adapted=adapted)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _write_json(path: str, obj: Any) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(_jsonable(obj), f, indent=2)
        f.write('\n')


def write_export(result: ExportResult, out_dir: str, info: Optional[Dict[str, Any]] = None
                 ) -> List[str]:
    """Write ``result`` as a folder (atomically: a failed write leaves no folder and keeps
    an existing one): the weights (``model.safetensors``, or ``pytorch_model.bin`` when the
    safetensors package is missing; both targets read either), ``config.json`` (timm's hub
    config or HF's ``BeitConfig``) and ``export.json`` (what was exported and dropped, how
    to load it, and ``info``). Returns the file names."""
    tensors = OrderedDict((k, v.detach().contiguous().clone()) for k, v in
                          result.state_dict.items())
    try:
        from safetensors.torch import save_file
    except ImportError:
        save_file = None
    weights = WEIGHTS_SAFETENSORS if save_file is not None else WEIGHTS_TORCH
    config = result.config['hub_config'] if result.to == 'timm' else result.config
    record = OrderedDict(target=result.to, kind=result.kind,
                         load=result.load_code.replace('FOLDER', osp.abspath(out_dir)))
    if result.to == 'timm':
        record.update(timm_model=result.config['model_name'],
                      timm_kwargs=result.config['kwargs'])
    record.update(weights=weights, adapted=result.adapted, filled=result.filled,
                  dropped=result.dropped)
    record.update(info or {})
    with atomic_output(out_dir) as tmp:
        os.makedirs(tmp)
        if save_file is not None:
            save_file(tensors, osp.join(tmp, weights), metadata={'format': 'pt'})
        else:
            torch.save(tensors, osp.join(tmp, weights))
        _write_json(osp.join(tmp, 'config.json'), config)
        _write_json(osp.join(tmp, 'export.json'), record)
    return [weights, 'config.json', 'export.json']


# ----------------------------------------------------------------------------- ONNX

class _Graph(torch.nn.Module):
    """What the ONNX file computes. A classifier: ``model(x, mode='tensor')``, the logits
    of mmpretrain's ImageClassifier. A segmentor: mmseg's ``encode_decode`` on the whole
    input: decode-head logits resized (bilinear) to the input size."""

    def __init__(self, model: torch.nn.Module, kind: str):
        super().__init__()
        self.model = model
        self.kind = kind
        head = getattr(model, 'decode_head', None)
        self.align_corners = bool(getattr(head, 'align_corners', False))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image, mode='tensor')
        if self.kind == 'segmentor':
            out = torch.nn.functional.interpolate(out, size=image.shape[2:], mode='bilinear',
                                                  align_corners=self.align_corners)
        return out


def onnx_graph(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The module :func:`export_onnx` traces (for comparisons with the ONNX file)."""
    return _Graph(model, kind).eval()


def export_onnx(model: torch.nn.Module, settings: Mapping[str, Any], path: str,
                kind: Optional[str] = None, opset: int = 18) -> Dict[str, Any]:
    """Write ``model`` (a built classifier or segmentor, eval mode) as an ONNX file with a
    dynamic batch axis and return its input / output contract.

    The graph is traced by ``torch.onnx.export(dynamo=True)``, the torch.export-based
    exporter (torch's default; the TorchScript one is deprecated and, here, fails on the
    segmentor's max-pool). Input ``image`` [batch, C, H, W] float32: the model's input
    after its data preprocessor (channel order and ``(pixel - mean) / std`` in the
    contract), at the backbone's ``img_size`` (fixed: the relative position index is
    built for that grid). Output ``logits``: [batch, classes] for a classifier;
    [batch, classes, H, W] for a segmentor (its ``encode_decode`` on the whole input, no
    sliding window). The contract is also stored in the file's metadata
    (``mmbeit_contract``).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as exc:
        raise ExportError(f'--to onnx needs the onnx and onnxscript packages ({exc}); '
                          'install the optional export dependencies: pip install -e '
                          '.[export]') from exc
    kind = kind or settings.get('model_kind')
    if kind not in ('classifier', 'segmentor') or settings.get('model_kind') != kind:
        raise ExportError(f"--to onnx exports a classifier or a segmentor as built from its "
                          f"config; this is a {settings.get('model_kind')} model asked as "
                          f'--kind {kind}')
    b = settings['backbone']
    h, w = b['img_size']
    c = b['in_channels']
    graph = onnx_graph(model, kind)
    example = torch.zeros(2, c, h, w, device=next(model.parameters()).device)
    n = settings['num_classes']
    contract = OrderedDict(
        input=OrderedDict(name='image', shape=['batch', c, h, w], dtype='float32',
                          channel_order=settings.get('channel_order', 'RGB'),
                          normalisation='(pixel - mean) / std, pixels in 0-255',
                          mean=settings.get('mean'), std=settings.get('std')),
        output=OrderedDict(name='logits', shape=['batch', n] if kind == 'classifier' else
                           ['batch', n, h, w]),
        computes=('logits of the classifier' if kind == 'classifier' else
                  "the segmentor's encode_decode on the whole input (decode-head logits "
                  'resized bilinearly to the input size); no sliding window'),
        exporter=f'torch.onnx.export(dynamo=True), opset {opset}')
    if settings.get('classes'):
        contract['classes'] = list(settings['classes'])
    import warnings
    with atomic_output(path, suffix='.onnx') as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            graph, (example, ), tmp, dynamo=True, input_names=['image'],
            output_names=['logits'], opset_version=opset, external_data=False,
            dynamic_shapes=({0: torch.export.Dim('batch', min=1)}, ), verbose=False)
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = 'mmbeit_contract', json.dumps(_jsonable(contract))
        onnx.save(proto, tmp)
    return contract

