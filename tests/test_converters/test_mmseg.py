"""mmseg layout -> mmbeit, on a real (tiny, random) mmseg ``EncoderDecoder`` with the
``BEiT`` backbone, ``Feature2Pyramid`` neck, ``UPerHead`` and an ``FCNHead`` auxiliary head."""
import pytest
import torch

from mmbeit.converters import convert
from mmbeit.models.backbones.beit_vit import BEiTViT

pytest.importorskip('mmseg')
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
D = ARCH['embed_dims']


def _randomize(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.eval()
    return model


def _mmseg_backbone(**kwargs):
    cfg = dict(type='BEiT', img_size=(48, 48), patch_size=16, embed_dims=D, num_layers=4,
               num_heads=2, mlp_ratio=2, out_indices=(0, 1, 2, 3), qv_bias=True,
               init_values=0.1, norm_cfg=dict(type='LN', eps=1e-6))
    cfg.update(kwargs)
    return cfg


def _build(cfg):
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg)
    model.init_weights()
    return _randomize(model)


def _segmentor():
    return _build(dict(
        type='EncoderDecoder',
        backbone=_mmseg_backbone(),
        neck=dict(type='Feature2Pyramid', embed_dim=D, rescales=[4, 2, 1, 0.5]),
        decode_head=dict(type='UPerHead', in_channels=[D] * 4, in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2), channels=16, num_classes=5),
        auxiliary_head=dict(type='FCNHead', in_channels=D, in_index=2, channels=16,
                            num_convs=1, concat_input=False, num_classes=5)))


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _ours(**kwargs):
    cfg = dict(arch=ARCH, img_size=48, patch_size=16, out_type='featmap',
               out_indices=(0, 1, 2, 3))
    cfg.update(kwargs)
    return BEiTViT(**cfg).eval()


def test_mmseg_segmentor_round_trip_and_features():
    ref = _segmentor()
    sd = ref.state_dict()
    out, report = convert({'meta': {'env': 'x'}, 'state_dict': sd}, 'mmseg')
    assert report.kind == 'segmentor'
    ours = _ours()
    rest = {k for k in sd if not k.startswith('backbone.')}
    assert set(out) == {'backbone.' + k for k in ours.state_dict()} | rest
    for k in rest:
        assert out[k] is sd[k]
    assert all(k.endswith('relative_position_index') for k in report.dropped)
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        for a, b in zip(ours(x), ref.backbone(x)):
            assert (a - b).abs().max().item() < 1e-5
    assert torch.equal(out['backbone.blocks.3.norm2.weight'], sd['backbone.layers.3.ln2.weight'])


def test_mmseg_bare_backbone_with_final_norm():
    backbone = _build(_mmseg_backbone(final_norm=True))
    sd = backbone.state_dict()
    assert 'ln1.weight' in sd
    out, report = convert(sd, 'mmseg')
    assert report.kind == 'backbone'
    _ours(final_norm=True).load_state_dict(out, strict=True)
    assert torch.equal(out['norm.weight'], sd['ln1.weight'])
    assert torch.equal(out['patch_embed.proj.weight'], sd['patch_embed.projection.weight'])


def test_mmseg_beit2mmseg_output_keeps_unilm_top_level_names():
    """beit2mmseg.py renames only blocks and patch_embed: a converted pretraining
    checkpoint keeps rel_pos_bias, mask_token, norm and lm_head."""
    backbone = _build(_mmseg_backbone())
    sd = dict(backbone.state_dict())
    sd['rel_pos_bias.relative_position_bias_table'] = torch.randn(28, 2)
    sd['rel_pos_bias.relative_position_index'] = torch.zeros(10, 10, dtype=torch.long)
    sd['mask_token'] = torch.randn(1, 1, D)
    sd['norm.weight'], sd['norm.bias'] = torch.randn(D), torch.randn(D)
    sd['lm_head.weight'], sd['lm_head.bias'] = torch.randn(64, D), torch.randn(64)
    out, report = convert(sd, 'mmseg', kind='backbone')
    assert 'MIM head' in report.dropped['lm_head.weight']
    assert torch.equal(out['rel_pos_bias.relative_position_bias_table'],
                       sd['rel_pos_bias.relative_position_bias_table'])
    assert {'mask_token', 'norm.weight', 'norm.bias'} <= set(out)


def test_mmseg_unknown_key_is_named():
    sd = dict(_segmentor().state_dict())
    sd['neck.upsample_8x.0.weight'] = torch.zeros(1)
    sd['backbone.layers.0.ffn.layers.2.weight'] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        convert(sd, 'mmseg')
    assert ("['backbone.layers.0.ffn.layers.2.weight', 'neck.upsample_8x.0.weight']"
            in str(err.value))
