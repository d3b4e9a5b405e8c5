"""HF transformers layout -> mmbeit.

transformers is not a dependency, so the HF state dicts are made from a random BEiTViT with
the renames of HF's own ``convert_beit_unilm_to_pytorch.py`` (written out below, including
the q/k/v split and the ``relative_position_index`` buffers older versions stored); when
transformers is importable a real ``BeitForImageClassification`` is checked as well.
"""
import re

import pytest
import torch

from mmbeit.converters import convert
from mmbeit.models.backbones.beit_vit import BEiTViT

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
D = ARCH['embed_dims']


def _randomize(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _backbone(**kwargs):
    cfg = dict(arch=ARCH, img_size=48, patch_size=16)
    cfg.update(kwargs)
    return _randomize(BEiTViT(**cfg)).eval()


def _index(n_tokens=10):
    return torch.zeros(n_tokens, n_tokens, dtype=torch.long)


def unilm_to_hf(sd, task):
    """HF's converter renames (Hugging Face transformers'
    convert_beit_unilm_to_pytorch.py), for the test data."""
    out = {}
    for key, val in sd.items():
        m = re.fullmatch(r'blocks\.(\d+)\.(.+)', key)
        if m:
            pre = f'beit.encoder.layer.{m.group(1)}.'
            rest = m.group(2)
            if rest == 'attn.qkv.weight':
                q, k, v = val.chunk(3, dim=0)
                out[pre + 'attention.attention.query.weight'] = q.clone()
                out[pre + 'attention.attention.key.weight'] = k.clone()
                out[pre + 'attention.attention.value.weight'] = v.clone()
                continue
            if rest == 'attn.relative_position_bias_table':
                rpb = pre + 'attention.attention.relative_position_bias.'
                out[rpb + 'relative_position_bias_table'] = val
                out[rpb + 'relative_position_index'] = _index()
                continue
            ren = {'norm1.': 'layernorm_before.', 'norm2.': 'layernorm_after.',
                   'attn.q_bias': 'attention.attention.query.bias',
                   'attn.v_bias': 'attention.attention.value.bias',
                   'attn.proj.': 'attention.output.dense.', 'mlp.fc1.': 'intermediate.dense.',
                   'mlp.fc2.': 'output.dense.', 'gamma_1': 'lambda_1', 'gamma_2': 'lambda_2'}
            for old, new in ren.items():
                if rest.startswith(old):
                    out[pre + new + rest[len(old):]] = val
                    break
            else:
                raise KeyError(key)
            continue
        ren = {'cls_token': 'beit.embeddings.cls_token',
               'mask_token': 'beit.embeddings.mask_token',
               'pos_embed': 'beit.embeddings.position_embeddings',
               'patch_embed.proj.weight': 'beit.embeddings.patch_embeddings.projection.weight',
               'patch_embed.proj.bias': 'beit.embeddings.patch_embeddings.projection.bias',
               'rel_pos_bias.relative_position_bias_table':
                   'beit.encoder.relative_position_bias.relative_position_bias_table',
               'fc_norm.weight': 'beit.pooler.layernorm.weight',
               'fc_norm.bias': 'beit.pooler.layernorm.bias',
               'norm.weight': 'layernorm.weight' if task == 'mim' else 'beit.layernorm.weight',
               'norm.bias': 'layernorm.bias' if task == 'mim' else 'beit.layernorm.bias',
               'head.weight': 'classifier.weight', 'head.bias': 'classifier.bias',
               'lm_head.weight': 'lm_head.weight', 'lm_head.bias': 'lm_head.bias'}
        out[ren[key]] = val
        if key == 'rel_pos_bias.relative_position_bias_table':
            out['beit.encoder.relative_position_bias.relative_position_index'] = _index()
    return out


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def test_hf_classifier_round_trip_and_qkv_concat():
    model = _backbone(out_type='avg_featmap')
    unilm = dict(model.state_dict())
    unilm['head.weight'], unilm['head.bias'] = torch.randn(7, D), torch.randn(7)
    hf = unilm_to_hf(unilm, 'cls')
    out, report = convert(hf, 'hf')
    assert report.kind == 'classifier' and report.kind_detected
    expected = {'backbone.' + k for k in model.state_dict()} | {'head.fc.weight',
                                                                 'head.fc.bias'}
    assert set(out) == expected
    for k, v in unilm.items():
        dst = 'head.fc.' + k[5:] if k.startswith('head.') else 'backbone.' + k
        assert torch.equal(out[dst], v), k
    # qkv rows are [query; key; value]
    pre = 'beit.encoder.layer.1.attention.attention.'
    qkv = out['backbone.blocks.1.attn.qkv.weight']
    assert qkv.shape == (3 * D, D)
    assert torch.equal(qkv[:D], hf[pre + 'query.weight'])
    assert torch.equal(qkv[D:2 * D], hf[pre + 'key.weight'])
    assert torch.equal(qkv[2 * D:], hf[pre + 'value.weight'])
    assert torch.equal(out['backbone.blocks.1.attn.q_bias'], hf[pre + 'query.bias'])
    assert torch.equal(out['backbone.blocks.1.attn.v_bias'], hf[pre + 'value.bias'])
    assert torch.equal(out['backbone.blocks.0.gamma_2'],
                       hf['beit.encoder.layer.0.lambda_2'])
    # every index buffer is dropped with its reason
    assert sorted(report.dropped) == sorted(k for k in hf if k.endswith('_index'))
    # backbone part loads strictly; features equal
    fresh = BEiTViT(arch=ARCH, img_size=48, patch_size=16, out_type='avg_featmap').eval()
    fresh.load_state_dict(_strip(out, 'backbone.'), strict=True)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], model(x)[0])


def test_hf_key_bias_zero_dropped_nonzero_rejected():
    unilm = dict(_backbone(out_type='avg_featmap').state_dict())
    hf = unilm_to_hf(unilm, 'cls')
    kb = 'beit.encoder.layer.0.attention.attention.key.bias'
    hf[kb] = torch.zeros(D)
    out, report = convert(hf, 'hf', kind='backbone')
    assert 'no key bias' in report.dropped[kb]
    assert set(out) == set(unilm)
    hf[kb] = torch.full((D, ), 1e-3)
    with pytest.raises(ValueError, match='key bias'):
        convert(hf, 'hf', kind='backbone')


def test_hf_mim_pretrain_layout():
    model = _backbone(use_mask_token=True, rel_pos_bias='shared', final_norm=True,
                      out_type='raw')
    unilm = dict(model.state_dict())
    unilm['lm_head.weight'], unilm['lm_head.bias'] = torch.randn(64, D), torch.randn(64)
    out, report = convert(unilm_to_hf(unilm, 'mim'), 'hf')
    assert report.kind == 'pretrain'
    expected = {'backbone.' + k for k in model.state_dict()} | {'head.lm_head.weight',
                                                                 'head.lm_head.bias'}
    assert set(out) == expected
    assert 'backbone.rel_pos_bias.relative_position_bias_table' in out
    assert torch.equal(out['backbone.norm.weight'], unilm['norm.weight'])
    assert torch.equal(out['backbone.mask_token'], unilm['mask_token'])
    fresh = BEiTViT(arch=ARCH, img_size=48, patch_size=16, use_mask_token=True,
                    rel_pos_bias='shared', final_norm=True, out_type='raw')
    fresh.load_state_dict(_strip(out, 'backbone.'), strict=True)


def test_hf_bare_beit_model_and_abs_pos():
    model = _backbone(use_abs_pos_emb=True, rel_pos_bias=None, final_norm=True,
                      out_type='cls_token', layer_scale_init_value=0.)
    hf = _strip(unilm_to_hf(dict(model.state_dict()), 'cls'), 'beit.')  # BeitModel
    out, report = convert(hf, 'hf')
    assert report.kind == 'backbone'
    assert set(out) == set(model.state_dict())
    assert torch.equal(out['pos_embed'], model.pos_embed)
    BEiTViT(arch=ARCH, img_size=48, patch_size=16, use_abs_pos_emb=True, rel_pos_bias=None,
            final_norm=True, out_type='cls_token', layer_scale_init_value=0.
            ).load_state_dict(out, strict=True)


def _mmseg_head_keys():
    """Key names of mmseg's UPerHead + FCNHead (what HF's heads mirror)."""
    pytest.importorskip('mmseg')
    from mmengine.registry import DefaultScope
    from mmseg.models.decode_heads import FCNHead, UPerHead
    with DefaultScope.overwrite_default_scope('mmseg'):  # their losses are mmseg's
        uper = UPerHead(in_channels=[D] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2),
                        channels=16, num_classes=5)
        fcn = FCNHead(in_channels=D, in_index=2, channels=16, num_convs=1,
                      concat_input=False, num_classes=5)
    return ({'decode_head.' + k: v for k, v in uper.state_dict().items()},
            {'auxiliary_head.' + k: v for k, v in fcn.state_dict().items()})


def test_hf_semantic_segmentation():
    model = _backbone(out_type='featmap', out_indices=(0, 1))
    hf = unilm_to_hf(dict(model.state_dict()), 'seg')
    fpn = {'fpn1.0.weight': torch.randn(D, D, 2, 2), 'fpn1.0.bias': torch.randn(D),
           'fpn1.1.weight': torch.randn(D), 'fpn1.1.bias': torch.randn(D),
           'fpn1.1.running_mean': torch.randn(D), 'fpn1.1.running_var': torch.rand(D),
           'fpn1.1.num_batches_tracked': torch.tensor(3),
           'fpn1.3.weight': torch.randn(D, D, 2, 2), 'fpn1.3.bias': torch.randn(D),
           'fpn2.0.weight': torch.randn(D, D, 2, 2), 'fpn2.0.bias': torch.randn(D)}
    hf.update(fpn)
    decode, aux = _mmseg_head_keys()
    for k, v in {**decode, **aux}.items():
        hf[k.replace('.conv_seg.', '.classifier.')] = v
    out, report = convert(hf, 'hf')
    assert report.kind == 'segmentor'
    for k, v in fpn.items():
        dst = k.replace('fpn1.', 'neck.upsample_4x.').replace('fpn2.', 'neck.upsample_2x.')
        assert out[dst] is v
    for k, v in {**decode, **aux}.items():
        assert out[k] is v, k
    assert 'decode_head.conv_seg.weight' in out and 'auxiliary_head.conv_seg.bias' in out
    BEiTViT(arch=ARCH, img_size=48, patch_size=16, out_type='featmap', out_indices=(0, 1)
            ).load_state_dict(_strip(out, 'backbone.'), strict=True)


def test_hf_unknown_key_is_named():
    hf = unilm_to_hf(dict(_backbone(out_type='avg_featmap').state_dict()), 'cls')
    hf['beit.encoder.layer.0.attention.attention.mystery'] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        convert(hf, 'hf')
    assert "['beit.encoder.layer.0.attention.attention.mystery']" in str(err.value)


def test_hf_missing_value_weight_leaves_qkv_unplaced():
    hf = unilm_to_hf(dict(_backbone(out_type='avg_featmap').state_dict()), 'cls')
    del hf['beit.encoder.layer.0.attention.attention.value.weight']
    with pytest.raises(ValueError) as err:
        convert(hf, 'hf')
    assert "['beit.encoder.layer.0.attention.attention.key.weight', " \
           "'beit.encoder.layer.0.attention.attention.query.weight']" in str(err.value)


def test_real_transformers_beit_classifier():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.BeitConfig(
        image_size=48, patch_size=16, hidden_size=D, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, use_relative_position_bias=True,
        use_mean_pooling=True, layer_scale_init_value=0.1, num_labels=7,
        layer_norm_eps=1e-6, hidden_act='gelu')
    hf_model = _randomize(transformers.BeitForImageClassification(cfg)).eval()
    out, report = convert(hf_model.state_dict(), 'hf')
    assert report.kind == 'classifier'
    ours = BEiTViT(arch=ARCH, img_size=48, patch_size=16, out_type='avg_featmap').eval()
    ours.load_state_dict(_strip(out, 'backbone.'), strict=True)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = hf_model(pixel_values=x).logits
        logits = torch.nn.functional.linear(ours(x)[0], out['head.fc.weight'],
                                            out['head.fc.bias'])
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


def test_real_transformers_beit_mim_model_is_a_pretraining_checkpoint():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.BeitConfig(
        image_size=48, patch_size=16, hidden_size=D, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, use_shared_relative_position_bias=True,
        use_mask_token=True, layer_scale_init_value=0.1, layer_norm_eps=1e-6)
    hf_model = _randomize(transformers.BeitForMaskedImageModeling(cfg)).eval()
    out, report = convert(hf_model.state_dict(), 'hf')
    assert report.kind == 'pretrain'
    assert torch.equal(out['head.lm_head.weight'], hf_model.lm_head.weight)
    backbone = BEiTViT(arch=ARCH, img_size=48, patch_size=16, use_mask_token=True,
                       rel_pos_bias='shared', final_norm=True, out_type='raw')
    backbone.load_state_dict(_strip(out, 'backbone.'), strict=True)
    layer0 = hf_model.beit.encoder.layer[0] if hasattr(hf_model.beit, 'encoder') else \
        hf_model.beit.layers[0]
    q = layer0.attention.q_proj.weight if hasattr(layer0.attention, 'q_proj') else \
        layer0.attention.attention.query.weight
    assert torch.equal(backbone.blocks[0].attn.qkv.weight[:D], q)
