"""arch_from_state_dict: BEiTViT settings read off a state dict rebuild the same model."""
import pytest
import torch

from mmbeit.checkpoint import load_state_dict_checked
from mmbeit.models.backbones import ArchInferenceError, BEiTViT, arch_from_state_dict

pytestmark = pytest.mark.usefixtures('one_thread')


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


CASES = {
    'shared-table-pretrain': dict(
        arch=dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64),
        img_size=32, patch_size=8, rel_pos_bias='shared', use_mask_token=True,
        final_norm=True, out_type='raw'),
    'per-layer-classifier': dict(
        arch=dict(embed_dims=48, num_layers=3, num_heads=3, feedforward_channels=96),
        img_size=64, patch_size=16, rel_pos_bias='per_layer', out_type='avg_featmap'),
    'no-layer-scale-abs-pos-cls': dict(
        arch=dict(embed_dims=24, num_layers=1, num_heads=2, feedforward_channels=40),
        img_size=48, patch_size=8, rel_pos_bias='shared', layer_scale_init_value=0.,
        use_abs_pos_emb=True, final_norm=True, out_type='cls_token', qv_bias=False),
    'abs-pos-only-segmentation': dict(
        arch=dict(embed_dims=32, num_layers=2, num_heads=8, feedforward_channels=64),
        img_size=40, patch_size=8, rel_pos_bias=None, use_abs_pos_emb=True,
        out_type='featmap', in_channels=1),
    'non-square-grid': dict(
        arch=dict(embed_dims=16, num_layers=1, num_heads=2, feedforward_channels=32),
        img_size=(32, 64), patch_size=8, rel_pos_bias='per_layer', out_type='raw'),
}


@pytest.mark.parametrize('name', CASES)
def test_inferred_settings_rebuild_identical_keys_and_shapes(name):
    cfg = CASES[name]
    sd = BEiTViT(**cfg).state_dict()
    kwargs = arch_from_state_dict(sd, num_heads=8 if cfg['rel_pos_bias'] is None else None)
    assert kwargs['arch'] == cfg['arch']
    assert kwargs['patch_size'] == cfg['patch_size']
    assert kwargs['rel_pos_bias'] == cfg['rel_pos_bias']
    assert kwargs['qv_bias'] == cfg.get('qv_bias', True)
    assert kwargs['in_channels'] == cfg.get('in_channels', 3)
    # a non-square table, (4, 8) -> 7 * 15 + 3 rows, is read back as the grid with h <= w
    # of that length (its orientation is not in the table)
    assert kwargs['img_size'] == cfg['img_size']
    rebuilt = BEiTViT(**kwargs)
    assert _shapes(rebuilt.state_dict()) == _shapes(sd)
    # and the weights load strictly (nothing missing, unexpected or adapted)
    report = load_state_dict_checked(rebuilt, sd, source=name, log=False)
    assert not report.adapted and not report.dropped


def test_features_of_the_rebuilt_model_equal_the_original():
    from _helpers import randomize_
    model = randomize_(BEiTViT(**CASES['no-layer-scale-abs-pos-cls']).eval())
    rebuilt = BEiTViT(**arch_from_state_dict(model.state_dict())).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0], rtol=0, atol=0)


def test_img_size_override_builds_a_model_the_load_path_adapts():
    sd = BEiTViT(**CASES['shared-table-pretrain']).state_dict()
    kwargs = arch_from_state_dict(sd, img_size=48)
    assert kwargs['img_size'] == 48
    report = load_state_dict_checked(BEiTViT(**kwargs), sd, source='x', log=False)
    assert [k for k, _ in report.adapted] == ['1 relative position table(s)']


def test_timm_beitv2_base_converted_layout():
    """timm's beitv2_base_patch16_224 (keys and shapes only: built on the meta device)
    through mmbeit.converters, then inferred and rebuilt: base, 12 heads, per-layer tables,
    layer scale, fc_norm (timm's mean pooling), no final norm, 224 px."""
    timm = pytest.importorskip('timm')
    from mmbeit.converters import convert
    with torch.device('meta'):
        sd = timm.create_model('beitv2_base_patch16_224', pretrained=False).state_dict()
    backbone, _ = convert(sd, 'timm', kind='backbone')
    kwargs = arch_from_state_dict(backbone)
    assert kwargs == dict(
        arch=dict(embed_dims=768, num_layers=12, num_heads=12, feedforward_channels=3072),
        img_size=224, patch_size=16, in_channels=3, use_abs_pos_emb=False,
        rel_pos_bias='per_layer', qv_bias=True, layer_scale_init_value=0.1,
        final_norm=False, use_mask_token=False, out_type='avg_featmap')
    rebuilt = BEiTViT(**kwargs)  # on the CPU: BEiTViT draws its drop-path rates there
    assert _shapes(rebuilt.state_dict()) == _shapes(backbone)


def test_errors_name_what_cannot_be_inferred_and_the_fix():
    sd = BEiTViT(**CASES['abs-pos-only-segmentation']).state_dict()
    with pytest.raises(ArchInferenceError, match=r'cannot infer num_heads: the state dict has '
                       r'no relative position table .* Pass num_heads= \(knn_eval.py: '
                       r'--num-heads N; N divides embed_dims=32\)'):
        arch_from_state_dict(sd)
    with pytest.raises(ArchInferenceError, match='num_heads=5 does not divide embed_dims=32'):
        arch_from_state_dict(sd, num_heads=5)
    del sd['pos_embed']
    with pytest.raises(ArchInferenceError, match=r'cannot infer img_size: .*neither a relative '
                       r'position table nor a pos_embed .*\(knn_eval.py: --img-size N\)'):
        arch_from_state_dict(sd, num_heads=4)
    assert arch_from_state_dict(sd, num_heads=4, img_size=24)['img_size'] == 24

    shared = BEiTViT(**CASES['shared-table-pretrain']).state_dict()
    with pytest.raises(ArchInferenceError, match='num_heads=2 was given but the relative '
                       r'position tables have 4 heads'):
        arch_from_state_dict(shared, num_heads=2)
    prefixed = {'backbone.' + k: v for k, v in shared.items()}
    with pytest.raises(ArchInferenceError, match=r"not a BEiTViT state dict: .*its keys carry "
                       r"'backbone.': take that prefix off first"):
        arch_from_state_dict(prefixed)
    gap = {k: v for k, v in shared.items() if not k.startswith('blocks.0.')}
    with pytest.raises(ArchInferenceError, match=r'blocks \[0\] are missing from the state '
                       'dict'):
        arch_from_state_dict(gap)
    per_layer = BEiTViT(**CASES['per-layer-classifier']).state_dict()
    del per_layer['blocks.1.attn.relative_position_bias_table']
    with pytest.raises(ArchInferenceError, match=r'per-layer relative position tables are '
                       r'missing for blocks \[1\]'):
        arch_from_state_dict(per_layer)
