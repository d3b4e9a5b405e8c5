"""Transfer from a pretraining checkpoint into downstream backbones (issue 6):
``BEiTViT.load_pretrained`` through ``init_cfg=dict(type='Pretrained')``, the
linear-probe outputs, and inputs on a patch grid smaller than the model's."""
import re

import pytest
import torch
from _helpers import TINY, randomize_, tiny

from mmbeit.checkpoint import CheckpointMismatchError as PretrainedMismatchError
from mmbeit.models.utils.rel_pos import build_relative_position_index, rel_pos_table_len

pytestmark = pytest.mark.usefixtures('one_thread')


def pretrain_backbone():
    """The backbone of a BEiT pretraining model (shared table, mask token, final norm)."""
    return randomize_(tiny(rel_pos_bias='shared', use_mask_token=True, final_norm=True,
                           out_type='raw'))


def save_pretrain_ckpt(path, backbone, extra=None):
    """The layout a pretraining run writes: backbone.*, neck.*, head.* under state_dict."""
    sd = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    sd['head.lm_head.weight'] = torch.randn(16, 32)
    sd['neck.cls_pt_layers.0.norm1.weight'] = torch.ones(32)
    sd.update(extra or {})
    torch.save({'meta': {'epoch': 1}, 'state_dict': sd}, path)
    return sd


def init_from(path, prefix='backbone.', **kwargs):
    model = tiny(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix=prefix),
                 **kwargs)
    model.init_weights()
    return model


def test_finetune_backbone_gets_every_pretrained_tensor(tmp_path):
    src = pretrain_backbone()
    sd = save_pretrain_ckpt(tmp_path / 'pt.pth', src)
    model = init_from(tmp_path / 'pt.pth')  # per-layer tables, mean pooling
    got = model.state_dict()
    shared = sd['backbone.rel_pos_bias.relative_position_bias_table']
    for i in range(TINY['num_layers']):
        assert torch.equal(got[f'blocks.{i}.attn.relative_position_bias_table'], shared)
    for k, v in got.items():
        if 'relative_position_bias_table' in k or k.startswith('fc_norm.'):
            continue
        assert torch.equal(v, sd[f'backbone.{k}']), k
    # fc_norm starts fresh at (1, 0) (unilm modeling_finetune.py): it is the only tensor not loaded
    assert torch.equal(got['fc_norm.weight'], torch.ones(32))
    assert torch.equal(got['fc_norm.bias'], torch.zeros(32))
    assert model.is_init
    report = model.pretrained_report
    # keys are named without the prefix; every tensor of the model is accounted for once
    assert [k for k, _ in report.adapted] == ['rel_pos_bias.relative_position_bias_table']
    assert [k for k, _ in report.dropped] == ['mask_token', 'norm.*']
    assert [k for k, _ in report.fresh] == ['fc_norm.weight', 'fc_norm.bias']
    assert sorted(report.loaded + ['fc_norm.weight', 'fc_norm.bias']) == sorted(got)
    assert report.ok


def test_linear_probe_backbone_keeps_the_pretrained_final_norm(tmp_path):
    src = pretrain_backbone()
    sd = save_pretrain_ckpt(tmp_path / 'pt.pth', src)
    model = init_from(tmp_path / 'pt.pth', final_norm=True, out_type='cls_token',
                      frozen_stages=2)
    assert torch.equal(model.norm.weight, sd['backbone.norm.weight'])
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training or all(not m.training for m in model.blocks)
    x = torch.randn(2, 3, 32, 32)
    ref = src.forward_layers(x, [1])[0]  # un-normed last block of the pretraining model
    expect = torch.nn.functional.layer_norm(ref[:, 0], (32, ), src.norm.weight, src.norm.bias,
                                            1e-6)
    torch.testing.assert_close(model(x)[0], expect, rtol=1e-5, atol=1e-5)


def test_a_frozen_probe_refuses_a_file_without_its_norm_unless_the_config_allows_it(tmp_path):
    """A parameter that will not train must come from the file: a frozen linear probe's
    final norm left at (1, 0) would silently probe different features."""
    src = pretrain_backbone()
    sd = save_pretrain_ckpt(tmp_path / 'pt.pth', src)
    no_norm = {k: v for k, v in sd.items() if not k.startswith('backbone.norm.')}
    torch.save({'state_dict': no_norm}, tmp_path / 'no_norm.pth')
    probe = dict(final_norm=True, out_type='cls_token', frozen_stages=2)
    with pytest.raises(PretrainedMismatchError,
                       match=r"no_norm\.pth.*\n  2 missing .*\[norm\.weight, norm\.bias\]"
                             r"(.|\n)*allow_fresh"):
        init_from(tmp_path / 'no_norm.pth', **probe)
    model = tiny(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'no_norm.pth'),
                               prefix='backbone.', allow_fresh=['norm.']), **probe)
    model.init_weights()
    assert [k for k, _ in model.pretrained_report.fresh] == ['norm.weight', 'norm.bias']
    # the same file into a probe whose norm trains is fine without allow_fresh
    trained = init_from(tmp_path / 'no_norm.pth', final_norm=True, out_type='cls_token')
    assert [k for k, _ in trained.pretrained_report.fresh] == ['norm.weight', 'norm.bias']


def test_cls_and_avg_is_the_raw_intermediate_cls_and_mean_patch_token():
    model = randomize_(tiny(arch=dict(TINY, num_layers=3), out_indices=[1],
                            out_type='cls_and_avg')).eval()
    x = torch.randn(2, 3, 32, 32)
    states = model.forward_layers(x, [1])[0]  # [B, N+1, D], no norm
    out = model(x)[0]
    assert out.shape == (2, 64)
    torch.testing.assert_close(out[:, :32], states[:, 0])
    torch.testing.assert_close(out[:, 32:], states[:, 1:].mean(dim=1))


def test_segmentation_backbone_at_a_larger_grid_gets_resized_tables(tmp_path):
    src = pretrain_backbone()
    sd = save_pretrain_ckpt(tmp_path / 'pt.pth', src)
    model = init_from(tmp_path / 'pt.pth', img_size=64, out_indices=[0, 1],
                      out_type='featmap')  # 8 x 8 grid from a 4 x 4 pretraining grid
    table = model.blocks[0].attn.relative_position_bias_table
    assert table.shape == (rel_pos_table_len((8, 8)), 4)
    assert torch.equal(model.blocks[1].attn.relative_position_bias_table, table)
    # the centre of the resized table (offset 0) and the cls rows keep their values
    old = sd['backbone.rel_pos_bias.relative_position_bias_table']
    torch.testing.assert_close(table[-3:], old[-3:])
    torch.testing.assert_close(table[(15 * 15) // 2], old[(7 * 7) // 2], rtol=1e-5, atol=1e-5)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd['backbone.blocks.1.mlp.fc2.weight'])
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8)] * 2
    adapted = dict(model.pretrained_report.adapted)
    assert adapted['2 relative position table(s)'].startswith('resized from grid (4, 4) to (8, 8)')


def test_classifier_checkpoint_into_a_segmentation_backbone(tmp_path):
    """BEiT's ADE20K recipe can start from an ImageNet fine-tuned classifier: its
    mean-pooling backbone has fc_norm, which a featmap backbone does not build. It is
    dropped and logged; every other tensor loads."""
    clf = randomize_(tiny(out_type='avg_featmap'))
    sd = {f'backbone.{k}': v for k, v in clf.state_dict().items()}
    assert 'backbone.fc_norm.weight' in sd
    sd.update({'head.fc.weight': torch.zeros(5, 32), 'head.fc.bias': torch.zeros(5)})
    torch.save({'state_dict': sd}, tmp_path / 'clf.pth')
    seg = init_from(tmp_path / 'clf.pth', out_type='featmap', out_indices=[0, 1])
    assert seg.fc_norm is None
    for k, v in seg.state_dict().items():
        assert torch.equal(v, sd[f'backbone.{k}']), k
    assert [k for k, _ in seg.pretrained_report.dropped] == ['fc_norm.*']
    assert seg.pretrained_report.fresh == []
    # a backbone that pools keeps it
    again = init_from(tmp_path / 'clf.pth', out_type='avg_featmap')
    assert torch.equal(again.fc_norm.weight, sd['backbone.fc_norm.weight'])


def test_bare_official_layout_loads_and_drops_the_named_non_backbone_parts(tmp_path):
    src = pretrain_backbone()
    sd = dict(src.state_dict())
    sd['rel_pos_bias.relative_position_index'] = build_relative_position_index((4, 4))
    sd['lm_head.weight'] = torch.randn(16, 32)
    sd['cls_pt_layers.0.norm1.weight'] = torch.ones(32)
    torch.save({'model': sd}, tmp_path / 'official.pth')
    model = init_from(tmp_path / 'official.pth')
    assert torch.equal(model.blocks[0].attn.qkv.weight, sd['blocks.0.attn.qkv.weight'])
    report = model.pretrained_report
    assert 'a bare backbone' in report.source
    assert [k for k, _ in report.dropped] == [
        'lm_head.* (1)', 'cls_pt_layers.* (1)', 'mask_token', 'norm.*',
        '*relative_position_index (1)']


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_file_and_keys(tmp_path):
    src = randomize_(tiny(rel_pos_bias='shared', layer_scale_init_value=0.))  # no gammas
    save_pretrain_ckpt(tmp_path / 'nogamma.pth', src)
    with pytest.raises(PretrainedMismatchError,
                       match=re.escape(str(tmp_path / 'nogamma.pth')) + r".*layer scale on\)"
                       r":\n  4 missing .*\[blocks\.0\.gamma_1, blocks\.0\.gamma_2"):
        init_from(tmp_path / 'nogamma.pth')
    save_pretrain_ckpt(tmp_path / 'extra.pth', pretrain_backbone(),
                       {'backbone.blocks.9.attn.proj.weight': torch.zeros(32, 32)})
    with pytest.raises(PretrainedMismatchError,
                       match=r'1 unexpected .*\[blocks\.9\.attn\.proj\.weight\]'):
        init_from(tmp_path / 'extra.pth')
    torch.save({'state_dict': {'encoder.w': torch.zeros(2)}}, tmp_path / 'other.pth')
    with pytest.raises(PretrainedMismatchError,
                       match=r"no key starts with 'backbone\.' and the file is not a bare "
                             r"BEiT backbone .*convert_checkpoint\.py"):
        init_from(tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='takes checkpoint \\(required\\)'):
        tiny(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'extra.pth'),
                           strict=True)).init_weights()


def test_smaller_input_grid_equals_a_model_built_for_it():
    """A 6 x 6 input on an 8 x 8 model indexes the same tables exactly: compare with a
    6 x 6 model whose table holds the 8 x 8 table's rows for offsets -5..5."""
    for mode in ('per_layer', 'shared'):
        big = randomize_(tiny(img_size=64, rel_pos_bias=mode, out_type='raw')).eval()
        small = tiny(img_size=48, rel_pos_bias=mode, out_type='raw').eval()
        sd = dict(big.state_dict())
        dy, dx = torch.meshgrid(torch.arange(-5, 6), torch.arange(-5, 6), indexing='ij')
        rows = ((dy + 7) * 15 + (dx + 7)).flatten().tolist() + [225, 226, 227]
        for k in list(sd):
            if k.endswith('relative_position_bias_table'):
                sd[k] = sd[k][rows]
        small.load_state_dict(sd)
        x = torch.randn(2, 3, 48, 48)
        torch.testing.assert_close(big(x)[0], small(x)[0], rtol=1e-5, atol=1e-5)
        # and the explicit attention path sees the same bias
        torch.testing.assert_close(big.get_attention_maps(x)[1],
                                   small.get_attention_maps(x)[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r'input patch grid \(10, 8\) is larger than the '
                                         r'model grid \(8, 8\).*img_size'):
        big(torch.randn(1, 3, 80, 64))


def test_no_rel_pos_model_with_pos_embed_resizes_it_on_the_fly():
    model = randomize_(tiny(img_size=32, rel_pos_bias=None, use_abs_pos_emb=True,
                            out_type='raw')).eval()
    other = tiny(img_size=48, rel_pos_bias=None, use_abs_pos_emb=True, out_type='raw').eval()
    other.load_state_dict(model.state_dict())  # the load path resizes pos_embed 4x4 -> 6x6
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(model(x)[0], other(x)[0], rtol=1e-5, atol=1e-5)
