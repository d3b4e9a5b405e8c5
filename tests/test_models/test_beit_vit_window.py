"""Windowed attention in BEiTViT (issue 17, ViTDet-style backbone; docs/method.md
"Windowed attention for detection"): the windowed block against the global block and a
by-hand loop over windows, the padding of a grid that is not a multiple of the window, and
the load path that keeps window tables as pretrained and resizes the global ones."""
import re

import pytest
import torch
from _helpers import randomize_, tiny

from mmbeit.models.utils.rel_pos import rel_pos_table_len, resize_rel_pos_table

pytestmark = pytest.mark.usefixtures('one_thread')


def windowed_copy(model, **kwargs):
    """A model with the weights of ``model`` (strict load) and the given window args."""
    other = tiny(**{**dict(img_size=model.img_size, out_type=model.out_type), **kwargs})
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_a_window_covering_the_grid_is_the_global_block():
    model = randomize_(tiny(out_type='raw', out_indices=[0, 1])).eval()  # 4 x 4 grid
    win = windowed_copy(model, out_indices=[0, 1], window_size=4, window_block_indexes=[0, 1])
    assert all(b.attn.attn_window == (4, 4) for b in win.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for want, got in zip(model(x), win(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        for want, got in zip(model.get_attention_maps(x), win.get_attention_maps(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def by_hand(attn, x, grid, window):
    """Windowed attention of ``attn`` (a BEiTAttention) with a loop over windows: each patch
    query sees cls and the real patches of its window (a border window is cut at the grid
    edge), the cls query sees every token. Relative offsets index the window table by the
    formula of BEiT's appendix; the last three rows are cls->token, token->cls, cls->cls."""
    (hp, wp), (wh, ww) = grid, window
    b, n1, c = x.shape
    nh, hd = attn.num_heads, attn.head_dims
    qkv = x @ attn.qkv.weight.t() + torch.cat(
        [attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    q, k, v = qkv.reshape(b, n1, 3, nh, hd).permute(2, 0, 3, 1, 4)  # [B, nH, N+1, hd]
    table = attn.relative_position_bias_table  # [T, nH]
    t = table.shape[0]
    out = torch.zeros_like(q)

    def bias(qpos, kpos):  # [nH] for two tokens, pos None = cls
        if qpos is None:
            return table[t - 1] if kpos is None else table[t - 3]
        if kpos is None:
            return table[t - 2]
        dy, dx = qpos[0] - kpos[0], qpos[1] - kpos[1]
        return table[(dy + wh - 1) * (2 * ww - 1) + dx + ww - 1]

    def attend(qi, qpos, keys):  # keys: [(token id, pos)]
        ids = [i for i, _ in keys]
        logits = (q[:, :, qi:qi + 1] * attn.scale) @ k[:, :, ids].transpose(-2, -1)
        logits = logits + torch.stack([bias(qpos, p) for _, p in keys], 1)[None, :, None]
        return logits.softmax(-1) @ v[:, :, ids]  # [B, nH, 1, hd]

    patches = [(1 + y * wp + xx, (y, xx)) for y in range(hp) for xx in range(wp)]
    out[:, :, :1] = attend(0, None, [(0, None)] + patches)
    for wy in range(0, hp, wh):
        for wx in range(0, wp, ww):
            inside = [(i, p) for i, p in patches
                      if wy <= p[0] < wy + wh and wx <= p[1] < wx + ww]
            for i, p in inside:
                out[:, :, i:i + 1] = attend(i, p, [(0, None)] + inside)
    out = out.transpose(1, 2).reshape(b, n1, c)
    return attn.proj(out)


@pytest.mark.parametrize('grid, window', [((4, 4), (2, 2)), ((5, 3), (2, 2)),
                                          ((4, 3), (3, 3))])
def test_windowed_attention_equals_a_loop_over_windows(grid, window):
    """(4, 4) / 2: four full windows; (5, 3) / 2 and (4, 3) / 3: the grid is padded to a
    multiple of the window (6 x 4, 6 x 3) and the padded keys take no part."""
    model = randomize_(tiny(img_size=(8 * grid[0], 8 * grid[1]), window_size=window,
                            window_block_indexes=[0])).eval()
    attn = model.blocks[0].attn
    assert attn.relative_position_bias_table.shape[0] == rel_pos_table_len(window)
    x = torch.randn(2, grid[0] * grid[1] + 1, 32)
    with torch.no_grad():
        want = by_hand(attn, x, grid, window)
        torch.testing.assert_close(attn(x, grid=grid), want, rtol=0, atol=1e-6)
        got, maps = attn(x, grid=grid, return_attn=True)  # the explicit (dense) path
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    n1 = grid[0] * grid[1] + 1
    assert maps.shape == (2, 4, n1, n1)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, n1))
    # patch (0, 0) does not see patch (window[0], 0) of the window below; cls sees all
    assert maps[:, :, 1, 1 + window[0] * grid[1]].abs().max() == 0
    assert maps[:, :, 1 + window[0] * grid[1], 1].abs().max() == 0
    assert maps[:, :, 0].min() > 0
    # the whole backbone keeps the detection neck's layout
    featmap = tiny(img_size=(8 * grid[0], 8 * grid[1]), window_size=window,
                   window_block_indexes=[0], out_type='featmap')
    with torch.no_grad():
        out = featmap(torch.randn(1, 3, 8 * grid[0], 8 * grid[1]))[0]
    assert out.shape == (1, 32, *grid)


def test_with_cp_gives_the_same_output_and_gradients():
    kwargs = dict(out_type='featmap', window_size=2, window_block_indexes=[0],
                  drop_path_rate=0.)
    plain = randomize_(tiny(**kwargs)).train()
    ckpt = tiny(with_cp=True, **kwargs).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for m in (plain, ckpt):
        y = m(x)[0]
        y.square().mean().backward()
        outs.append((y.detach(), m.blocks[0].attn.relative_position_bias_table.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])


def test_pretraining_checkpoint_keeps_window_tables_and_resizes_global_ones(tmp_path):
    """Scaled-down ViTDet: pretraining grid 8 (64 px / patch 8), detection grid 16
    (128 px), windows of 8 in block 0, global attention in block 1."""
    src = randomize_(tiny(img_size=64, rel_pos_bias='shared', use_mask_token=True,
                          final_norm=True, out_type='raw'))
    sd = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    sd['head.lm_head.weight'] = torch.randn(16, 32)
    torch.save({'meta': {'epoch': 1}, 'state_dict': sd}, tmp_path / 'pt.pth')
    model = tiny(img_size=128, out_type='featmap', out_indices=[1], window_size=8,
                 window_block_indexes=[0], init_cfg=dict(
                     type='Pretrained', checkpoint=str(tmp_path / 'pt.pth'),
                     prefix='backbone.'))
    model.init_weights()
    shared = sd['backbone.rel_pos_bias.relative_position_bias_table']  # grid 8: 228 rows
    assert torch.equal(model.blocks[0].attn.relative_position_bias_table, shared)
    glob = model.blocks[1].attn.relative_position_bias_table
    assert glob.shape == (rel_pos_table_len(16), 4)
    assert torch.equal(glob, resize_rel_pos_table(shared, (8, 8), (16, 16)))
    report = model.pretrained_report
    adapted = dict(report.adapted)
    assert adapted['rel_pos_bias.relative_position_bias_table'].startswith(
        'expanded into 2 per-layer tables')
    assert adapted['1 relative position table(s) of windowed blocks [0]'].startswith(
        'kept as in the file: their window grid (8, 8)')
    assert adapted['1 relative position table(s) of global blocks [1]'] == (
        'resized from grid (8, 8) to (16, 16) (geometric-progression bicubic)')
    assert re.search(r'windows \(8, 8\) in blocks \[0\]', report.target)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128))[0].shape == (1, 32, 16, 16)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(window_size=2), ValueError, 'needs both window_size'),
    (dict(window_block_indexes=[0]), ValueError, 'needs both window_size'),
    (dict(window_size=2, window_block_indexes=[2]), IndexError,
     'window_block_indexes: 2 is not a block index of 2 blocks'),
    (dict(window_size=2, window_block_indexes=[0], rel_pos_bias='shared'), ValueError,
     "needs rel_pos_bias='per_layer'"),
])
def test_bad_window_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        tiny(**kwargs)


def test_defaults_have_no_windows_and_negative_indexes_count_from_the_end():
    assert tiny().window_size is None
    assert all(b.attn.attn_window is None for b in tiny().blocks)
    model = tiny(window_size=(2, 1), window_block_indexes=[-1])
    assert model.window_block_indexes == [1]
    assert [b.attn.attn_window for b in model.blocks] == [None, (2, 1)]
    assert model.blocks[1].attn.relative_position_bias_table.shape[0] == \
        rel_pos_table_len((2, 1))
    with pytest.raises(ValueError, match='needs the patch grid'):
        model.blocks[1].attn(torch.randn(1, 17, 32))
