"""Tests for mmbeit/models/backbones/beit_vit.py (BEiT / BEiT v2 backbone,
init 1.6, outputs 1.7, load path 1.8; key layout of docs/contracts.md), including
numerical equality with timm's ``Beit``."""
import math

import pytest
import torch
import torch.nn as nn
from _helpers import TINY, randomize_, tiny

from mmbeit.models.backbones.beit_vit import BEiTBlock, BEiTViT
from mmbeit.models.utils.rel_pos import rel_pos_table_len, resize_pos_embed, resize_rel_pos_table

# ---------------------------------------------------------------------------------------
# equality with timm
# ---------------------------------------------------------------------------------------
BASE2 = dict(embed_dims=768, num_layers=2, num_heads=12, feedforward_channels=3072)


def timm_beit(img_size=224, global_pool='avg', depth=12, **kw):
    beit = pytest.importorskip('timm.models.beit')
    args = dict(img_size=img_size, patch_size=16, num_classes=0, global_pool=global_pool,
                embed_dim=768, depth=depth, num_heads=12, mlp_ratio=4.0, qkv_bias=True,
                use_abs_pos_emb=False)
    args.update(kw)
    return beit.Beit(**args).eval()


def load_into_timm(model, timm_model):
    missing, unexpected = timm_model.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected
    assert all(k.endswith('relative_position_index') or k.endswith('k_bias') for k in missing)


VARIANTS = {
    # v1 fine-tune style: per-layer tables, LayerScale 0.1, no abs pos
    'v1': (dict(rel_pos_bias='per_layer', layer_scale_init_value=0.1),
           dict(use_rel_pos_bias=True, init_values=0.1)),
    # v2 pretraining style: one shared table, LayerScale 1e-5
    'v2': (dict(rel_pos_bias='shared', layer_scale_init_value=1e-5),
           dict(use_shared_rel_pos_bias=True, init_values=1e-5)),
    # VQ-KD encoder style: abs pos, no relative bias, no LayerScale
    'vqkd': (dict(rel_pos_bias=None, use_abs_pos_emb=True, layer_scale_init_value=0.),
             dict(use_abs_pos_emb=True, init_values=None)),
}


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_equal_to_timm_tokens(variant):
    """Final-normed tokens vs timm ``forward_features`` (global_pool='token' keeps
    ``norm``). The full 12-layer base model for v1; base width with 2 layers for the
    others (CPU time)."""
    ours_kw, timm_kw = VARIANTS[variant]
    arch, depth = ('base', 12) if variant == 'v1' else (BASE2, 2)
    ours = randomize_(BEiTViT(arch, out_type='raw', final_norm=True, **ours_kw)).eval()
    ref = timm_beit(global_pool='token', depth=depth, **timm_kw)
    load_into_timm(ours, ref)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out, expected = ours(x)[0], ref.forward_features(x)
    assert out.shape == (1, 197, 768)
    diff = (out - expected).abs().max().item()
    print(f'{variant} tokens: max abs diff {diff:.2e}')
    assert diff < 1e-5, diff


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_equal_to_timm_avg_pool(variant):
    """Mean pooling + fc_norm vs timm pre-logits with global_pool='avg' (base width)."""
    ours_kw, timm_kw = VARIANTS[variant]
    ours = randomize_(BEiTViT(BASE2, out_type='avg_featmap', **ours_kw), seed=1).eval()
    assert ours.norm is None and ours.fc_norm is not None
    ref = timm_beit(global_pool='avg', depth=2, **timm_kw)
    load_into_timm(ours, ref)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = ours(x)[0]
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    diff = (out - expected).abs().max().item()
    print(f'{variant} avg: max abs diff {diff:.2e}')
    assert out.shape == (2, 768) and diff < 1e-5, diff


def test_equal_to_timm_after_resize_224_to_384():
    """224 weights through our load path into a 384 model, then into timm's 384 Beit."""
    src = randomize_(BEiTViT(BASE2, rel_pos_bias='per_layer', use_abs_pos_emb=True,
                             out_type='raw', final_norm=True))
    dst = BEiTViT(BASE2, img_size=384, rel_pos_bias='per_layer', use_abs_pos_emb=True,
                  out_type='raw', final_norm=True).eval()
    dst.load_state_dict(src.state_dict(), strict=True)  # through the load path
    table = src.state_dict()['blocks.1.attn.relative_position_bias_table']
    assert torch.equal(dst.blocks[1].attn.relative_position_bias_table.data,
                       resize_rel_pos_table(table, 14, 24))
    assert torch.equal(dst.pos_embed.data, resize_pos_embed(src.pos_embed.data, 14, 24))
    ref = timm_beit(img_size=384, global_pool='token', depth=2, use_rel_pos_bias=True,
                    use_abs_pos_emb=True, init_values=0.1)
    load_into_timm(dst, ref)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        out, expected = dst(x)[0], ref.forward_features(x)
    diff = (out - expected).abs().max().item()
    print(f'384: max abs diff {diff:.2e}')
    assert out.shape == (1, 577, 768) and diff < 1e-5, diff


def test_non_square_matches_timm():
    model = randomize_(tiny(img_size=(32, 48), out_type='raw', final_norm=True)).eval()
    ref = timm_beit(img_size=(32, 48), global_pool='token', patch_size=8, embed_dim=32,
                    depth=2, num_heads=4, mlp_ratio=2.0, use_rel_pos_bias=True,
                    init_values=0.1)
    load_into_timm(model, ref)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert (model(x)[0] - ref.forward_features(x)).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------
# forward behaviour
# ---------------------------------------------------------------------------------------
def test_output_types_and_non_square():
    x = torch.randn(2, 3, 64, 96)
    kw = dict(arch=TINY, img_size=(64, 96), patch_size=16)
    shapes = {'cls_token': (2, 32), 'avg_featmap': (2, 32), 'featmap': (2, 32, 4, 6),
              'raw': (2, 25, 32)}
    raw = randomize_(BEiTViT(out_type='raw', **kw)).eval()
    tokens = raw(x)[0]
    for out_type, shape in shapes.items():
        model = BEiTViT(out_type=out_type, final_norm=out_type == 'cls_token', **kw).eval()
        model.load_state_dict(raw.state_dict(), strict=False)
        out = model(x)
        assert len(out) == 1 and out[0].shape == shape
    feat = BEiTViT(out_type='featmap', **kw).eval()
    feat.load_state_dict(raw.state_dict())
    # featmap is the raw patch tokens laid out on the grid (row-major)
    assert torch.equal(feat(x)[0][:, :, 1, 2], tokens[:, 1 + 1 * 6 + 2])


def test_out_indices_negative():
    model = randomize_(tiny(arch=dict(TINY, num_layers=3), out_indices=(-1, -3),
                            out_type='raw', final_norm=True)).eval()
    assert model.out_indices == [0, 2]
    single = tiny(arch=dict(TINY, num_layers=3), out_indices=2, out_type='raw',
                  final_norm=True).eval()
    single.load_state_dict(model.state_dict())
    captured = {}
    model.blocks[0].register_forward_hook(lambda m, args, out: captured.update(y=out))
    x = torch.randn(1, 3, 32, 32)
    outs = model(x)
    assert len(outs) == 2
    assert torch.allclose(outs[1], single(x)[0])
    # the first output is the raw block-0 output; only the last one gets `norm`
    assert torch.equal(outs[0], captured['y'])
    assert not torch.allclose(outs[0], model.norm(outs[0]), atol=1e-3)
    with pytest.raises(IndexError):
        tiny(out_indices=2)


def test_mask_token_replaces_masked_patches():
    model = randomize_(tiny(use_mask_token=True, rel_pos_bias=None)).eval()
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 15]] = True
    mask[1, 3] = True
    model(x, mask)
    tokens = captured['x']  # [B, N+1, D] block-0 input (no pos embed in this model)
    patches = model.patch_embed(x).flatten(2).transpose(1, 2)
    assert torch.equal(tokens[:, 0], model.cls_token[0].expand(2, -1))
    for b in range(2):
        for j in range(16):
            want = model.mask_token[0, 0] if mask[b, j] else patches[b, j]
            assert torch.allclose(tokens[b, 1 + j], want), (b, j)
    # a [B, Hp, Wp] mask gives the same result
    out_flat = model(x, mask)[0]
    assert torch.equal(model(x, mask.reshape(2, 4, 4))[0], out_flat)


def test_mask_errors():
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match='use_mask_token'):
        tiny()(x, torch.zeros(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match='mask must have shape'):
        tiny(use_mask_token=True)(x, torch.zeros(1, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match='grid'):
        tiny()(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match='final_norm'):
        tiny(out_type='cls_token')


def test_sdpa_equals_explicit_path():
    torch.manual_seed(0)
    block = randomize_(BEiTBlock(32, 4, 64, window_size=(2, 3))).eval()
    x = torch.randn(2, 7, 32)
    shared = torch.randn(4, 7, 7)
    y_sdpa = block(x, shared)
    y_expl, attn = block(x, shared, return_attn=True)
    assert torch.allclose(y_sdpa, y_expl, atol=1e-6)
    assert attn.shape == (2, 4, 7, 7) and torch.allclose(attn.sum(-1), torch.ones(2, 4, 7))
    # whole model: redo the forward with the explicit path and compare
    model = randomize_(tiny(rel_pos_bias='shared', out_type='raw', final_norm=True)).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = model.get_attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 17, 17)
    h = model._embed(x, None)
    bias = model.rel_pos_bias()
    for blk, m in zip(model.blocks, maps):
        h, a = blk(h, bias, return_attn=True)
        assert torch.equal(a, m)
    assert torch.allclose(model(x)[0], model.norm(h), atol=1e-5)


def test_init_statistics():
    torch.manual_seed(0)
    model = tiny(arch=dict(TINY, num_layers=3, embed_dims=64, feedforward_channels=256),
                 rel_pos_bias='shared', use_abs_pos_emb=True, use_mask_token=True,
                 final_norm=True)
    model.init_weights()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            bound = 0.02
            if name.endswith('attn.proj') or name.endswith('mlp.fc2'):
                bound /= math.sqrt(2 * (int(name.split('.')[1]) + 1))
            w = m.weight.abs().max().item()
            assert bound * 0.9 < w <= bound * (1 + 1e-6), (name, w, bound)
            assert m.bias is None or torch.count_nonzero(m.bias) == 0
        elif isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    for p in (model.cls_token, model.mask_token, model.pos_embed):
        assert p.abs().max() <= 0.02 and p.std() > 0.005
    assert torch.count_nonzero(model.rel_pos_bias.relative_position_bias_table) == 0
    assert torch.all(model.blocks[1].gamma_1 == 0.1)
    assert torch.count_nonzero(model.blocks[0].attn.q_bias) == 0


def test_drop_path_schedule_and_single_drop():
    model = tiny(arch=dict(TINY, num_layers=4), drop_path_rate=0.3)
    rates = [blk.drop_path.drop_prob for blk in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # one DropPath per block, none hidden inside the FFN (mmpretrain's double drop)
    block = model.blocks[3]
    assert sum(type(m).__name__ == 'DropPath' for m in block.modules()) == 1
    # with rate 1 both residual branches vanish in training
    block.drop_path.drop_prob = 1.0
    block.train()
    x = torch.randn(2, 17, 32)
    assert torch.equal(block(x), x)


def test_frozen_stages():
    model = tiny(frozen_stages=1, use_abs_pos_emb=True, final_norm=True)
    model.train()
    frozen = ['patch_embed.', 'cls_token', 'pos_embed', 'blocks.0.']
    for name, p in model.named_parameters():
        assert p.requires_grad != any(name.startswith(f) for f in frozen), name
    assert not model.patch_embed.training and not model.blocks[0].training
    assert model.blocks[1].training and model.norm.training
    full = tiny(frozen_stages=2, final_norm=True).train()
    assert not any(p.requires_grad for p in full.parameters())
    assert not full.norm.training


def test_with_cp_same_output_and_grads(monkeypatch):
    import torch.utils.checkpoint as cp
    calls = []
    original = cp.checkpoint
    monkeypatch.setattr(cp, 'checkpoint', lambda *a, **k: calls.append(k) or original(*a, **k))
    torch.manual_seed(0)
    plain = randomize_(tiny(rel_pos_bias='shared', out_type='raw', final_norm=True)).train()
    ckpt = tiny(rel_pos_bias='shared', out_type='raw', final_norm=True, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outs = [m(x)[0] for m in (plain, ckpt)]
    assert len(calls) == 2 and all(k.get('use_reentrant') is False for k in calls)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for out in outs:
        out.pow(2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_get_layer_depth():
    model = tiny(rel_pos_bias='shared', use_abs_pos_emb=True, use_mask_token=True,
                 final_norm=True)
    assert model.num_layers == 2
    expected = {'cls_token': 0, 'mask_token': 0, 'pos_embed': 0, 'patch_embed.proj.weight': 0,
                'patch_embed.proj.bias': 0, 'rel_pos_bias.relative_position_bias_table': 3,
                'norm.weight': 3, 'norm.bias': 3, 'fc_norm.weight': 3, 'fc_norm.bias': 3}
    names = [n for n, _ in model.named_parameters()]
    for name in names:
        want = expected.get(name, int(name.split('.')[1]) + 1 if name.startswith('blocks.')
                            else None)
        assert model.get_layer_depth(name) == want, name
    assert set(expected) <= set(names)
    assert model.get_layer_depth('blocks.1.attn.q_bias') == 2
    assert model.get_layer_depth('backbone.blocks.0.mlp.fc1.weight', prefix='backbone.') == 1


def test_key_layout():
    model = tiny(rel_pos_bias='per_layer', use_mask_token=True, final_norm=True)
    keys = set(model.state_dict())
    assert {'patch_embed.proj.weight', 'cls_token', 'mask_token', 'norm.weight',
            'fc_norm.weight', 'blocks.1.attn.qkv.weight', 'blocks.1.attn.q_bias',
            'blocks.1.attn.v_bias', 'blocks.1.attn.relative_position_bias_table',
            'blocks.1.gamma_1', 'blocks.1.gamma_2', 'blocks.1.mlp.fc2.bias',
            'blocks.1.norm2.bias'} <= keys
    assert not any('relative_position_index' in k or 'qkv.bias' in k for k in keys)
    assert 'pos_embed' not in keys and 'blocks.0.gamma_1' not in set(
        tiny(layer_scale_init_value=0).state_dict())


# ---------------------------------------------------------------------------------------
# load path
# ---------------------------------------------------------------------------------------
def pretrain_state(**kw):
    model = randomize_(tiny(rel_pos_bias='shared', use_mask_token=True, final_norm=True,
                            out_type='raw', **kw))
    state = model.state_dict()
    state['rel_pos_bias.relative_position_index'] = model.rel_pos_bias.relative_position_index
    return state


def test_load_shared_into_per_layer():
    state = pretrain_state()
    model = tiny(rel_pos_bias='per_layer')  # avg_featmap: no mask token, no norm
    state['fc_norm.weight'], state['fc_norm.bias'] = torch.ones(32), torch.zeros(32)
    adapted = model.adapt_state_dict(state)
    assert 'rel_pos_bias.relative_position_bias_table' in state  # input untouched
    assert not any(k.startswith('rel_pos_bias') for k in adapted)
    # A strict load keeps what the model lacks as unexpected: only load_pretrained drops a
    # pretraining file's mask token and final norm.
    assert {'mask_token', 'norm.weight', 'norm.bias'} <= set(adapted)
    with pytest.raises(RuntimeError, match='Unexpected key.*"mask_token", "norm.weight"'):
        model.load_state_dict(state, strict=True)
    state = {k: v for k, v in state.items() if not k.startswith(('mask_token', 'norm.'))}
    model.load_state_dict(state, strict=True)
    for blk in model.blocks:
        assert torch.equal(blk.attn.relative_position_bias_table.data,
                           state['rel_pos_bias.relative_position_bias_table'])


def test_load_per_layer_into_shared_raises():
    state = randomize_(tiny(rel_pos_bias='per_layer')).state_dict()
    with pytest.raises(ValueError, match='per-layer'):
        tiny(rel_pos_bias='shared').load_state_dict(state)


def test_load_resize_with_prefix():
    from mmengine.runner.checkpoint import load_state_dict as mm_load
    state = pretrain_state(use_abs_pos_emb=True)
    wrapped = {f'backbone.{k}': v for k, v in state.items()}
    for loader in ('torch', 'mmengine'):
        holder = nn.Module()
        holder.backbone = tiny(img_size=48, rel_pos_bias='per_layer', use_abs_pos_emb=True,
                               use_mask_token=True, out_type='raw', final_norm=True)
        if loader == 'torch':
            holder.load_state_dict(wrapped, strict=True)
        else:
            mm_load(holder, dict(wrapped), strict=True)
        model = holder.backbone
        table = state['rel_pos_bias.relative_position_bias_table']
        assert table.shape[0] == rel_pos_table_len(4)
        assert torch.equal(model.blocks[1].attn.relative_position_bias_table.data,
                           resize_rel_pos_table(table, 4, 6))
        assert torch.equal(model.pos_embed.data, resize_pos_embed(state['pos_embed'], 4, 6))
        assert model(torch.randn(1, 3, 48, 48))[0].shape == (1, 37, 32)


def test_pretrained_init_cfg(tmp_path):
    state = pretrain_state()
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in state.items()}}, path)
    model = tiny(img_size=48, rel_pos_bias='per_layer', out_type='raw', init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    model.init_weights()
    assert torch.equal(model.blocks[0].mlp.fc1.weight.data, state['blocks.0.mlp.fc1.weight'])
    assert torch.equal(
        model.blocks[1].attn.relative_position_bias_table.data,
        resize_rel_pos_table(state['rel_pos_bias.relative_position_bias_table'], 4, 6))


def test_registry_build():
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    model = MODELS.build(dict(type='mmbeit.BEiTViT', arch=TINY, img_size=32, patch_size=8,
                              out_type='featmap', out_indices=(0, 1)))
    assert isinstance(model, BEiTViT)
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape for o in outs] == [(1, 32, 4, 4)] * 2
    small = BEiTViT('t', img_size=32)
    assert (small.embed_dims, small.num_layers, small.num_heads) == (192, 12, 3)
    assert small.blocks[0].mlp.fc1.out_features == 768
    assert BEiTViT.arch_zoo['large'] == dict(embed_dims=1024, num_layers=24, num_heads=16,
                                             feedforward_channels=4096)
    with pytest.raises(KeyError):
        BEiTViT('huge')


def test_load_into_mmpretrain_classifier():
    """A classifier checkpoint with a shared table at another size into an mmpretrain
    ImageClassifier, with the ``backbone.`` prefix, strict (the table is expanded and
    resized by the load hook; a pretraining file's mask token and final norm would be
    unexpected here: those go through init_cfg's Pretrained)."""
    pytest.importorskip('mmpretrain')
    from mmengine.runner.checkpoint import load_state_dict as mm_load
    from mmpretrain.registry import MODELS as MP_MODELS
    clf = MP_MODELS.build(dict(
        type='ImageClassifier', _scope_='mmpretrain',
        backbone=dict(type='mmbeit.BEiTViT', arch=TINY, img_size=48, patch_size=8),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=32)))
    assert isinstance(clf.backbone, BEiTViT)
    state = {f'backbone.{k}': v for k, v in pretrain_state().items()
             if not k.startswith(('mask_token', 'norm.'))}
    state.update({'backbone.fc_norm.weight': torch.ones(32), 'backbone.fc_norm.bias':
                  torch.zeros(32), 'head.fc.weight': torch.zeros(5, 32),
                  'head.fc.bias': torch.zeros(5)})
    mm_load(clf, state, strict=True)
    assert torch.equal(
        clf.backbone.blocks[0].attn.relative_position_bias_table.data,
        resize_rel_pos_table(state['backbone.rel_pos_bias.relative_position_bias_table'], 4, 6))
    assert clf(torch.randn(2, 3, 48, 48), mode='tensor').shape == (2, 5)
