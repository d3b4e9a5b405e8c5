"""unilm / timm layout -> mmbeit (real timm ``Beit`` models for the key names; unilm
pretraining and segmentation dicts built from them with the unilm names
(docs/contracts.md)."""
import pytest
import torch

from mmbeit.converters import convert
from mmbeit.models.backbones.beit_vit import BEiTViT

timm_beit = pytest.importorskip('timm.models.beit')

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
D = ARCH['embed_dims']
TINY = dict(img_size=48, patch_size=16, embed_dim=D, depth=2, num_heads=2, mlp_ratio=2.,
            use_abs_pos_emb=False, use_rel_pos_bias=True)


def _perturb(model, scale=0.02, seed=0):
    """Random values everywhere (rel-pos tables and LayerScale start at constants)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    model.eval()
    return model


def _timm(**kwargs):
    cfg = dict(TINY)
    cfg.update(kwargs)
    return _perturb(timm_beit.Beit(**cfg))


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _ours(**kwargs):
    cfg = dict(arch=ARCH, img_size=48, patch_size=16)
    cfg.update(kwargs)
    return BEiTViT(**cfg).eval()


def _logits(backbone, out, x):
    with torch.no_grad():
        feats = backbone(x)[-1]
        return torch.nn.functional.linear(feats, out['head.fc.weight'], out['head.fc.bias'])


def test_timm_classifier_mean_pool_logits():
    ref = _timm(num_classes=5, global_pool='avg', init_values=0.1)
    out, report = convert(ref.state_dict(), 'timm')
    assert report.kind == 'classifier'
    ours = _ours(out_type='avg_featmap')
    expected = {'backbone.' + k for k in ours.state_dict()} | {'head.fc.weight', 'head.fc.bias'}
    assert set(out) == expected
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)
    for k, v in ref.state_dict().items():
        if 'relative_position_index' not in k and not k.startswith('head.'):
            assert torch.equal(out['backbone.' + k], v), k
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expect = ref(x)
    diff = (_logits(ours, out, x) - expect).abs().max().item()
    print(f'tiny timm mean-pool classifier max |logit diff| = {diff:.3g}')
    assert diff < 1e-5


def test_timm_cls_token_abs_pos_backbone():
    """The IN-1k v1 style: absolute pos_embed, no rel-pos, no LayerScale, cls pooling."""
    ref = _timm(num_classes=5, global_pool='token', init_values=None, use_abs_pos_emb=True,
                use_rel_pos_bias=False)
    out, report = convert(ref.state_dict(), 'unilm', kind='backbone')
    assert set(report.dropped) == {'head.weight', 'head.bias'}
    assert report.dropped['head.weight'] == 'classifier head not part of a backbone checkpoint'
    ours = _ours(out_type='cls_token', final_norm=True, use_abs_pos_emb=True,
                 rel_pos_bias=None, layer_scale_init_value=0.)
    ours.load_state_dict(out, strict=True)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expect = ref.forward_head(ref.forward_features(x), pre_logits=True)
        diff = (ours(x)[0] - expect).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize('name,init_values', [('beit_base_patch16_224', 0.1),
                                              ('beitv2_base_patch16_224', 1e-5)])
def test_timm_base_classifier_logits(name, init_values):
    import timm
    ref = _perturb(timm.create_model(name, pretrained=False), scale=0.02, seed=1)
    out, report = convert({'model': ref.state_dict()}, 'timm')
    assert report.kind == 'classifier'
    ours = BEiTViT(arch='base', img_size=224, out_type='avg_featmap',
                   layer_scale_init_value=init_values).eval()
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expect = ref(x)
    diff = (_logits(ours, out, x) - expect).abs().max().item()
    print(f'{name}: max |logit diff| = {diff:.3g}')
    assert diff < 1e-5


def _unilm_pretrain(v2: bool):
    """unilm VisionTransformerForMaskedImageModeling(CLS) names: timm's shared-rel-pos Beit
    (same names) + mask_token, rel_pos_bias.relative_position_index, norm, lm_head and,
    for v2, cls_pt_layers.k.* (two extra blocks, unilm modeling_pretrain.py)."""
    ref = _timm(num_classes=0, global_pool='token', init_values=0.1, use_rel_pos_bias=False,
                use_shared_rel_pos_bias=True)
    sd = dict(ref.state_dict())
    assert 'rel_pos_bias.relative_position_bias_table' in sd and 'norm.weight' in sd
    sd['mask_token'] = torch.randn(1, 1, D)
    sd['rel_pos_bias.relative_position_index'] = torch.zeros(10, 10, dtype=torch.long)
    sd['lm_head.weight'], sd['lm_head.bias'] = torch.randn(64, D), torch.randn(64)
    if v2:
        for k, v in list(sd.items()):
            if k.startswith('blocks.'):
                sd['cls_pt_layers.' + k[len('blocks.'):]] = v.clone() + 1
    return sd


@pytest.mark.parametrize('v2', [False, True])
def test_unilm_pretrain_layout(v2):
    sd = _unilm_pretrain(v2)
    out, report = convert({'model': sd}, 'unilm')
    assert report.kind == 'pretrain'
    backbone = _ours(use_mask_token=True, rel_pos_bias='shared', final_norm=True,
                     out_type='raw')
    expected = {'backbone.' + k for k in backbone.state_dict()}
    expected |= {'head.lm_head.weight', 'head.lm_head.bias'}
    if v2:
        expected |= {'neck.cls_pt_layers.' + k[len('blocks.'):] for k in
                     backbone.state_dict() if k.startswith('blocks.')}
    assert set(out) == expected
    assert list(report.dropped) == ['rel_pos_bias.relative_position_index']
    backbone.load_state_dict(_strip(out, 'backbone.'), strict=True)
    assert torch.equal(out['head.lm_head.weight'], sd['lm_head.weight'])
    assert torch.equal(out['backbone.norm.weight'], sd['norm.weight'])
    if v2:
        assert torch.equal(out['neck.cls_pt_layers.1.attn.qkv.weight'],
                           sd['cls_pt_layers.1.attn.qkv.weight'])
    # a backbone for fine-tuning: MIM head and aggregation blocks dropped, with reasons
    out_b, report_b = convert(sd, 'unilm', kind='backbone')
    assert set(out_b) == set(backbone.state_dict())
    assert 'MIM head' in report_b.dropped['lm_head.weight']
    if v2:
        assert 'aggregation' in report_b.dropped['cls_pt_layers.0.norm1.weight']


def _mmseg_parts():
    pytest.importorskip('mmseg')
    from mmengine.registry import DefaultScope
    from mmseg.models.decode_heads import FCNHead, UPerHead
    from mmseg.models.necks import Feature2Pyramid
    with DefaultScope.overwrite_default_scope('mmseg'):  # their losses are mmseg's
        neck = Feature2Pyramid(embed_dim=D, rescales=[4, 2, 1, 0.5])
        uper = UPerHead(in_channels=[D] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2),
                        channels=16, num_classes=5)
        fcn = FCNHead(in_channels=D, in_index=2, channels=16, num_convs=1,
                      concat_input=False, num_classes=5)
    return neck, uper, fcn


def test_unilm_segmentation_layout():
    neck, uper, fcn = _mmseg_parts()
    ref = _timm(num_classes=0, global_pool='', init_values=0.1)
    sd = {'backbone.' + k: v for k, v in ref.state_dict().items()
          if not k.startswith(('norm.', 'fc_norm.'))}
    sd['backbone.blocks.0.attn.relative_position_index'] = torch.zeros(10, 10)
    # unilm's fpn1 = (ConvT, BN, GELU, ConvT), fpn2 = ConvT: the same tensors as
    # Feature2Pyramid's upsample_4x / upsample_2x
    for k, v in neck.state_dict().items():
        sd['backbone.' + k.replace('upsample_4x', 'fpn1').replace('upsample_2x', 'fpn2')] = v
    sd.update({'decode_head.' + k: v for k, v in uper.state_dict().items()})
    sd.update({'auxiliary_head.' + k: v for k, v in fcn.state_dict().items()})
    out, report = convert({'meta': {}, 'state_dict': sd}, 'unilm')
    assert report.kind == 'segmentor'
    backbone = _ours(out_type='featmap', out_indices=(0, 1))
    expected = {'backbone.' + k for k in backbone.state_dict()}
    expected |= {'neck.' + k for k in neck.state_dict()}
    expected |= {'decode_head.' + k for k in uper.state_dict()}
    expected |= {'auxiliary_head.' + k for k in fcn.state_dict()}
    assert set(out) == expected
    backbone.load_state_dict(_strip(out, 'backbone.'), strict=True)
    neck.load_state_dict(_strip(out, 'neck.'), strict=True)
    assert out['neck.upsample_4x.1.running_var'] is sd['backbone.fpn1.1.running_var']
    assert out['decode_head.conv_seg.weight'] is sd['decode_head.conv_seg.weight']


def test_unilm_unknown_key_is_named():
    sd = dict(_timm(num_classes=5).state_dict())
    sd['blocks.1.attn.unknown_table'] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        convert(sd, 'unilm')
    assert "['blocks.1.attn.unknown_table']" in str(err.value)
    sd['backbone.fpn3.0.weight'] = torch.zeros(3)  # fpn3 has no parameters in unilm
    with pytest.raises(ValueError, match=r"\['backbone.fpn3.0.weight', 'blocks.1.attn"):
        convert(sd, 'timm')


@pytest.mark.parametrize('init_values', [0.1, 1e-5])
def test_timm_classifier_logits_after_loading_at_384(init_values):
    """A 224 timm classifier, converted, loaded by our load path into a 384 backbone
    (geometric rel-pos resize); timm's 384 model given the same resized weights (and the
    same head) must produce the same logits."""
    base = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.,
                use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=init_values,
                global_pool='avg', num_classes=10)
    ref224 = _perturb(timm_beit.Beit(img_size=224, **base), seed=2)
    out, _ = convert(ref224.state_dict(), 'timm')
    ours = BEiTViT(arch='base', img_size=384, out_type='avg_featmap',
                   layer_scale_init_value=init_values).eval()
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)    # resizes 27x27 -> 47x47
    assert ours.blocks[0].attn.relative_position_bias_table.shape == (47 * 47 + 3, 12)
    ref384 = timm_beit.Beit(img_size=384, **base).eval()
    resized = dict(ours.state_dict(), **{'head.weight': out['head.fc.weight'],
                                         'head.bias': out['head.fc.bias']})
    missing, unexpected = ref384.load_state_dict(resized, strict=False)
    assert not unexpected and all('relative_position_index' in k for k in missing)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        diff = (_logits(ours, out, x) - ref384(x)).abs().max().item()
    print(f'384 logits (init_values={init_values}): max abs diff {diff:.3g}')
    assert diff < 1e-5
