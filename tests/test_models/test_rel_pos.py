"""Tests for mmbeit/models/utils/rel_pos.py (relative position bias,
geometric-progression table resize and absolute pos_embed resize)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.interpolate import CubicSpline, RectBivariateSpline

from mmbeit.models.utils.rel_pos import (
    RelativePositionBias,
    build_relative_position_index,
    cubic_spline_matrix,
    geometric_axis,
    geometric_ratio,
    grid_from_table_len,
    rel_pos_table_len,
    resize_pos_embed,
    resize_rel_pos_table,
)


def test_index_matrix_2x3_by_hand():
    # Wh=2, Ww=3: 2Ww-1 = 5, T = 3*5 + 3 = 18, cls entries 15 (row 0), 16 (col 0), 17 ([0,0]).
    # Patch tokens 1..6 are (0,0) (0,1) (0,2) (1,0) (1,1) (1,2);
    # entry = (yq-yk+1)*5 + (xq-xk+2).
    expected = torch.tensor([
        [17, 15, 15, 15, 15, 15, 15],
        [16, 7, 6, 5, 2, 1, 0],
        [16, 8, 7, 6, 3, 2, 1],
        [16, 9, 8, 7, 4, 3, 2],
        [16, 12, 11, 10, 7, 6, 5],
        [16, 13, 12, 11, 8, 7, 6],
        [16, 14, 13, 12, 9, 8, 7],
    ])
    index = build_relative_position_index((2, 3))
    assert index.dtype == torch.long
    assert torch.equal(index, expected)
    assert rel_pos_table_len((2, 3)) == 18


@pytest.mark.parametrize('img,length', [(224, 732), (384, 2212), (512, 3972), (640, 6244)])
def test_table_lengths(img, length):
    grid = img // 16
    assert rel_pos_table_len(grid) == length
    module = RelativePositionBias(grid, num_heads=2)
    assert module.relative_position_bias_table.shape == (length, 2)
    index = module.relative_position_index
    assert index.shape == (grid * grid + 1, ) * 2
    # patch-patch entries cover 0..(2W-1)^2-1, the three cls entries the last rows
    assert index[1:, 1:].min() == 0 and index[1:, 1:].max() == (2 * grid - 1) ** 2 - 1
    assert set(index.unique().tolist()) == set(range(length))


def test_relative_position_bias_module():
    module = RelativePositionBias((2, 3), num_heads=4)
    assert torch.count_nonzero(module.relative_position_bias_table) == 0  # zeros init
    assert list(module.state_dict()) == ['relative_position_bias_table']  # index not saved
    with torch.no_grad():
        module.relative_position_bias_table.normal_()
    table = module.relative_position_bias_table
    bias = module()
    assert bias.shape == (4, 7, 7)
    assert torch.equal(bias[:, 0, 0], table[17])
    assert torch.equal(bias[:, 0, 5], table[15])
    assert torch.equal(bias[:, 4, 0], table[16])
    assert torch.equal(bias[:, 6, 1], table[14])  # query (1,2) vs key (0,0)
    assert torch.equal(bias[:, 1, 6], table[0])  # query (0,0) vs key (1,2)


@pytest.mark.parametrize('dst,q', [(47, 1.090307), (63, 1.134918), (79, 1.168504)])
def test_geometric_ratio_reference_values(dst, q):
    assert geometric_ratio(27, dst) == pytest.approx(q, abs=1e-5)
    axis = geometric_axis(27, dst).numpy()
    # hand-built axis: d0 = 1, d_k = d_(k-1) + q^k; symmetric, outermost point at dst // 2
    q_exact = geometric_ratio(27, dst)
    d = [1.0]
    for k in range(1, 13):
        d.append(d[-1] + q_exact ** k)
    assert np.allclose(axis, np.array([-v for v in d[::-1]] + [0.0] + d))
    assert axis[-1] == pytest.approx(dst // 2, abs=1e-3)
    assert geometric_ratio(27, 27) == 1.0


def test_cubic_spline_matrix_is_not_a_knot():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.uniform(0.5, 2.0, 9))
    f = rng.normal(size=9)
    xq = np.linspace(x[0], x[-1], 31)
    w = cubic_spline_matrix(torch.from_numpy(x), torch.from_numpy(xq)).numpy()
    ref = CubicSpline(x, f, bc_type='not-a-knot')(xq)
    assert np.abs(w @ f - ref).max() < 1e-10
    # clamped outside the data range, like FITPACK's evaluation
    w_out = cubic_spline_matrix(torch.from_numpy(x), torch.tensor([x[0] - 1, x[-1] + 1]))
    assert np.allclose(w_out.numpy() @ f, [f[0], f[-1]])
    # fewer than 4 points: the interpolating polynomial (exact on a parabola)
    x3 = np.array([-1.0, 0.0, 1.7])
    w3 = cubic_spline_matrix(torch.from_numpy(x3), torch.tensor([-0.5, 0.3, 1.2])).numpy()
    assert np.allclose(w3 @ (x3 ** 2), [0.25, 0.09, 1.44])


def _scipy_resize(table, src_grid, dst_grid):
    """Independent reference: RectBivariateSpline (s=0, FITPACK) per head on the same
    geometric source axes; the spline degree drops to n-1 on axes with < 4 points."""
    (hs, ws), (hd, wd) = src_grid, dst_grid
    sy, sx, dy, dx = 2 * hs - 1, 2 * ws - 1, 2 * hd - 1, 2 * wd - 1
    axes = []
    for s, d in ((sy, dy), (sx, dx)):
        src = geometric_axis(s, d).numpy() if s != d else np.arange(-(s // 2), s // 2 + 1.0)
        axes.append((src, np.arange(-(d // 2), d // 2 + 1.0)))
    (ys, yd), (xs, xd) = axes
    out = []
    for h in range(table.shape[1]):
        z = table[:sy * sx, h].reshape(sy, sx)
        spline = RectBivariateSpline(ys, xs, z, kx=min(3, sy - 1), ky=min(3, sx - 1), s=0)
        out.append(spline(yd, xd).reshape(-1))
    return np.concatenate([np.stack(out, 1), table[sy * sx:]], 0)


@pytest.mark.parametrize('src,dst', [((14, 14), (24, 24)), ((3, 4), (5, 6)),
                                     ((4, 3), (4, 6)), ((2, 3), (3, 4)), ((5, 5), (3, 3))])
def test_resize_matches_scipy(src, dst):
    rng = np.random.default_rng(1)
    table = rng.normal(size=(rel_pos_table_len(src), 3))
    out = resize_rel_pos_table(torch.from_numpy(table), src, dst)
    assert out.shape == (rel_pos_table_len(dst), 3)
    assert out.dtype == torch.float64
    assert np.abs(out.numpy() - _scipy_resize(table, src, dst)).max() < 1e-9
    assert torch.equal(out[-3:], torch.from_numpy(table[-3:]))  # cls rows kept
    # float32 tables come back as float32
    out32 = resize_rel_pos_table(torch.from_numpy(table).float(), src, dst)
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), out, atol=1e-5)


def test_resize_identity_and_errors():
    table = torch.randn(rel_pos_table_len((14, 14)), 4)
    out = resize_rel_pos_table(table, 14, (14, 14))
    assert torch.equal(out, table) and out.data_ptr() != table.data_ptr()
    with pytest.raises(ValueError):
        resize_rel_pos_table(torch.randn(10, 4), 14, 24)


def test_resize_reproduces_smooth_function():
    # a smooth function of the offset, sampled at the geometric source positions,
    # is reproduced on the integer target offsets
    def fn(dy, dx):
        return np.sin(0.15 * dy) + 0.5 * np.cos(0.1 * dx) + 0.01 * dy * dx

    for src, dst in (((14, 14), (24, 24)), ((14, 10), (20, 16))):
        ys = geometric_axis(2 * src[0] - 1, 2 * dst[0] - 1).numpy()
        xs = geometric_axis(2 * src[1] - 1, 2 * dst[1] - 1).numpy()
        body = fn(ys[:, None], xs[None, :]).reshape(-1, 1)
        table = torch.from_numpy(np.concatenate([body, np.zeros((3, 1))]))
        out = resize_rel_pos_table(table, src, dst)[:-3, 0].numpy()
        yd = np.arange(-(dst[0] - 1), dst[0])
        xd = np.arange(-(dst[1] - 1), dst[1])
        target = fn(yd[:, None], xd[None, :]).reshape(-1)
        assert np.abs(out - target).max() < 5e-3


def test_grid_from_table_len():
    assert grid_from_table_len(732) == (14, 14)
    assert grid_from_table_len(rel_pos_table_len((4, 6)), like=(4, 6)) == (4, 6)
    assert grid_from_table_len(rel_pos_table_len((6, 4)), like=(6, 4)) == (6, 4)
    with pytest.raises(ValueError):
        grid_from_table_len(2)


def test_resize_pos_embed():
    src, dst, dim = (3, 4), (5, 6), 8
    pos = torch.randn(1, 1 + 12, dim)
    out = resize_pos_embed(pos, src, dst)
    assert out.shape == (1, 1 + 30, dim)
    assert torch.equal(out[:, 0], pos[:, 0])  # cls kept
    # reference: interpolate every channel separately from a [H, W] image
    grid = pos[0, 1:].reshape(3, 4, dim)
    for c in range(dim):
        img = grid[:, :, c][None, None]
        ref = F.interpolate(img, size=dst, mode='bicubic', align_corners=False)[0, 0]
        assert torch.allclose(out[0, 1:, c].reshape(dst), ref, atol=1e-6)
    const = torch.ones(1, 13, dim)
    assert torch.allclose(resize_pos_embed(const, src, dst), torch.ones(1, 31, dim), atol=1e-6)
    assert torch.equal(resize_pos_embed(pos, src, src), pos)
    with pytest.raises(ValueError):
        resize_pos_embed(pos, (4, 4), dst)
