"""mmpretrain layout -> mmbeit, on real (tiny, randomly initialised) mmpretrain models:
``ImageClassifier`` + ``BEiTViT`` + ``LinearClsHead``, and the BEiT v1 / v2 pretraining
pieces (``BEiTPretrainViT``, ``BEiTV2Neck``, ``BEiTV1Head`` / ``BEiTV2Head``)."""
import pytest
import torch

from mmbeit.converters import convert
from mmbeit.models.backbones.beit_vit import BEiTViT

pytest.importorskip('mmpretrain')
from mmengine.registry import DefaultScope  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
D = ARCH['embed_dims']


def _build(cfg):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg)
    model.init_weights()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # rel-pos tables / LayerScale start at constants
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.eval()
    return model


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _ours(**kwargs):
    cfg = dict(arch=ARCH, img_size=48, patch_size=16)
    cfg.update(kwargs)
    return BEiTViT(**cfg).eval()


def _mp_backbone(**kwargs):
    cfg = dict(type='BEiTViT', arch=ARCH, img_size=48, patch_size=16,
               layer_scale_init_value=0.1)
    cfg.update(kwargs)
    return cfg


def test_mmpretrain_classifier_round_trip_and_logits():
    ref = _build(dict(
        type='ImageClassifier',
        backbone=_mp_backbone(out_type='avg_featmap', final_norm=False,
                              use_abs_pos_emb=False, use_rel_pos_bias=True),
        neck=None,
        head=dict(type='LinearClsHead', num_classes=5, in_channels=D)))
    sd = ref.state_dict()
    assert 'backbone.ln2.weight' in sd and 'backbone.ln1.weight' not in sd
    out, report = convert({'meta': {}, 'state_dict': sd}, 'mmpretrain')
    assert report.kind == 'classifier'
    ours = _ours(out_type='avg_featmap')
    assert set(out) == ({'backbone.' + k for k in ours.state_dict()}
                        | {'head.fc.weight', 'head.fc.bias'})
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)
    assert torch.equal(out['backbone.fc_norm.weight'], sd['backbone.ln2.weight'])
    assert torch.equal(out['backbone.blocks.1.mlp.fc1.weight'],
                       sd['backbone.layers.1.ffn.layers.0.0.weight'])
    assert all('relative_position_index' in k for k in report.dropped)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expect = ref(x, mode='tensor')
        logits = torch.nn.functional.linear(ours(x)[0], out['head.fc.weight'],
                                            out['head.fc.bias'])
    assert (logits - expect).abs().max().item() < 1e-5


def test_mmpretrain_classifier_loads_into_image_classifier_with_our_backbone():
    import mmbeit.models  # noqa: F401  (registers mmbeit.BEiTViT)
    ref = _build(dict(
        type='ImageClassifier', backbone=_mp_backbone(out_type='avg_featmap'), neck=None,
        head=dict(type='LinearClsHead', num_classes=5, in_channels=D)))
    out, _ = convert(ref.state_dict(), 'mmpretrain')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        target = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='mmbeit.BEiTViT', arch=ARCH, img_size=48, patch_size=16,
                          out_type='avg_featmap'),
            neck=None, head=dict(type='LinearClsHead', num_classes=5, in_channels=D)))
    target.load_state_dict(out, strict=True)


def _pretrain_backbone(**kwargs):
    return _mp_backbone(type='BEiTPretrainViT', use_abs_pos_emb=False, use_rel_pos_bias=False,
                        use_shared_rel_pos_bias=True, **kwargs)


def test_mmpretrain_beit_v1_pretrain_layout():
    backbone = _build(_pretrain_backbone(final_norm=True, out_type='featmap'))
    head = _build(dict(type='BEiTV1Head', embed_dims=D, num_embed=64,
                       loss=dict(type='CrossEntropyLoss')))
    sd = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    sd.update({'head.' + k: v for k, v in head.state_dict().items()})
    sd['target_generator.encoder.blocks.input.w'] = torch.zeros(3)  # tokenizer: dropped
    out, report = convert(sd, 'mmpretrain')
    assert report.kind == 'pretrain'
    assert 'tokenizer' in report.dropped['target_generator.encoder.blocks.input.w']
    ours = _ours(use_mask_token=True, rel_pos_bias='shared', final_norm=True, out_type='raw')
    assert set(out) == ({'backbone.' + k for k in ours.state_dict()}
                        | {'head.lm_head.weight', 'head.lm_head.bias'})
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)
    assert torch.equal(out['head.lm_head.weight'], sd['head.cls_head.weight'])
    assert torch.equal(out['backbone.norm.bias'], sd['backbone.ln1.bias'])
    assert torch.equal(out['backbone.mask_token'], sd['backbone.mask_token'])


def test_mmpretrain_beit_v2_pretrain_layout():
    backbone = _build(_pretrain_backbone(final_norm=False, out_type='featmap',
                                         out_indices=[0, 1]))
    # mmpretrain's BEiTV2Neck reads 'depth' from a custom arch dict
    neck = _build(dict(type='BEiTV2Neck', num_layers=2, early_layers=1,
                       backbone_arch=dict(ARCH, depth=2)))
    head = _build(dict(type='BEiTV2Head', embed_dims=D, num_embed=64,
                       loss=dict(type='CrossEntropyLoss')))
    sd = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    sd.update({'neck.' + k: v for k, v in neck.state_dict().items()})
    sd.update({'head.' + k: v for k, v in head.state_dict().items()})
    assert 'neck.norm.weight' in sd and 'backbone.ln1.weight' not in sd
    out, report = convert({'state_dict': sd}, 'mmpretrain')
    assert report.kind == 'pretrain'
    ours = _ours(use_mask_token=True, rel_pos_bias='shared', final_norm=True, out_type='raw')
    expected = {'backbone.' + k for k in ours.state_dict()}
    expected |= {'neck.cls_pt_layers.' + k[len('blocks.'):] for k in ours.state_dict()
                 if k.startswith('blocks.')}
    expected |= {'head.lm_head.weight', 'head.lm_head.bias'}
    assert set(out) == expected
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)
    assert torch.equal(out['backbone.norm.weight'], sd['neck.norm.weight'])
    assert torch.equal(out['neck.cls_pt_layers.1.mlp.fc2.weight'],
                       sd['neck.patch_aggregation.1.ffn.layers.1.weight'])
    assert torch.equal(out['neck.cls_pt_layers.0.gamma_1'],
                       sd['neck.patch_aggregation.0.gamma_1'])


def test_mmpretrain_bare_backbone_and_cls_token_norm():
    backbone = _build(_mp_backbone(out_type='cls_token', final_norm=True))
    sd = backbone.state_dict()
    assert 'ln1.weight' in sd
    out, report = convert(sd, 'mmpretrain')
    assert report.kind == 'backbone'
    _ours(out_type='cls_token', final_norm=True).load_state_dict(out, strict=True)
    assert torch.equal(out['norm.weight'], sd['ln1.weight'])


def test_mmpretrain_unknown_key_is_named():
    sd = dict(_build(_mp_backbone(out_type='avg_featmap')).state_dict())
    sd = {'backbone.' + k: v for k, v in sd.items()}
    sd['backbone.layers.0.attn.extra_bias'] = torch.zeros(2)
    with pytest.raises(ValueError) as err:
        convert(sd, 'mmpretrain')
    assert "['backbone.layers.0.attn.extra_bias']" in str(err.value)
