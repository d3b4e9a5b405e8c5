"""Relative position bias and position-embedding resizing for BEiT / BEiT v2.

Implements the BEiT relative position bias (unilm beit/modeling_finetune.py; BEiT paper, arXiv
2106.08254, appendix A) and the resolution changes of unilm beit/run_class_finetuning.py
(docs/method.md "Relative position bias" and "Changing the resolution"):

- :func:`build_relative_position_index`: the (N+1)x(N+1) index matrix ``R`` for any
  (possibly non-square) Wh x Ww patch grid, with the three cls entries.
- :class:`RelativePositionBias`: a table [(2Wh-1)(2Ww-1)+3, nH] (zeros init) plus the
  non-persistent index buffer; ``forward()`` gathers the bias [nH, N+1, N+1].
- :func:`resize_rel_pos_table`: the geometric-progression bicubic resize of
  unilm run_class_finetuning.py,
  generalised to rectangular grids (one ratio q per axis).
- :func:`resize_pos_embed`: bicubic resize of an absolute position embedding
  (unilm run_class_finetuning.py).
"""
import math
from numbers import Integral
from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'to_2tuple', 'build_relative_position_index', 'gather_rel_pos_bias',
    'RelativePositionBias', 'geometric_ratio', 'geometric_axis', 'cubic_spline_matrix',
    'resize_rel_pos_table', 'resize_pos_embed', 'rel_pos_table_len', 'grid_from_table_len'
]

GridT = Union[int, Sequence[int]]
NUM_CLS_ENTRIES = 3  # cls->token, token->cls, cls->cls


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def to_2tuple(x: GridT) -> Tuple[int, int]:
    """``7 -> (7, 7)``; a pair (tuple, list, ``torch.Size``) of ints -> a tuple of two
    Python ints; anything else (a float, a string, one or three numbers) is a ValueError.

    Not ``mmengine.utils.to_2tuple``: that returns any iterable unchanged (a list stays
    a list, ``(7,)``, ``(1, 2, 3)`` and ``'12'`` pass as they are, floats are kept),
    while a grid or image size here must be two ints (callers unpack, compare and hash
    it)."""
    if _is_int(x):
        return (int(x), int(x))
    if (isinstance(x, (tuple, list, torch.Size)) and len(x) == 2
            and all(_is_int(v) for v in x)):
        return (int(x[0]), int(x[1]))
    raise ValueError(f'expected an int or a pair of ints (h, w), got {x!r}')


def rel_pos_table_len(window_size: GridT) -> int:
    """Rows of the relative position table for a Wh x Ww grid: (2Wh-1)(2Ww-1)+3."""
    wh, ww = to_2tuple(window_size)
    return (2 * wh - 1) * (2 * ww - 1) + NUM_CLS_ENTRIES


def grid_from_table_len(table_len: int, like: GridT = None) -> Tuple[int, int]:
    """Recover the grid (Wh, Ww) from a table length, preferring a square grid.

    If the length does not come from a square grid, the factorisation whose aspect ratio
    is closest to ``like`` (a reference grid) is returned. Raises ``ValueError`` if no grid
    fits.
    """
    body = table_len - NUM_CLS_ENTRIES
    side = math.isqrt(max(body, 0))
    if side * side == body and side % 2 == 1:
        return ((side + 1) // 2, (side + 1) // 2)
    # (2Wh-1)(2Ww-1) = body: both factors are odd
    cands = [((a + 1) // 2, (body // a + 1) // 2) for a in range(1, body + 1, 2)
             if body % a == 0 and (body // a) % 2 == 1]
    if not cands:
        raise ValueError(f'a relative position table of length {table_len} fits no grid')
    ref = to_2tuple(like) if like is not None else (1, 1)
    return min(cands, key=lambda g: abs(math.log(g[0] / g[1]) - math.log(ref[0] / ref[1])))


def build_relative_position_index(window_size: GridT,
                                  table_window: GridT = None) -> torch.Tensor:
    """Index matrix R [(N+1), (N+1)] of unilm modeling_finetune.py for a Wh x Ww grid (N = Wh*Ww).

    Rows are queries, columns keys, token 0 is cls, patch (y, x) is token 1 + y*Ww + x.
    Patch-patch entries are (yq-yk+Th-1)*(2Tw-1) + (xq-xk+Tw-1); then row 0 <- T-3,
    column 0 <- T-2 (overwriting [0, 0]), and [0, 0] <- T-1, with T the table length.

    (Th, Tw) is the grid the table was made for, ``table_window`` (default: the grid
    itself). A smaller grid inside it indexes the same table exactly: every relative
    offset of the smaller grid is also an offset of the larger one.
    """
    wh, ww = to_2tuple(window_size)
    th, tw = to_2tuple(table_window) if table_window is not None else (wh, ww)
    if wh > th or ww > tw:
        raise ValueError(f'grid {(wh, ww)} is larger than the table grid {(th, tw)}')
    # patch-patch entries by broadcasting the row and column offsets separately into the
    # [Wh, Ww, Wh, Ww] view of the matrix: no [2, N, N] intermediate (at a 1024 px input,
    # N = 4096, that intermediate alone is 268 MB and the build took ~1 s a block)
    ys, xs = torch.arange(wh), torch.arange(ww)
    dy = (ys[:, None] - ys[None, :] + th - 1) * (2 * tw - 1)  # [Wh (query), Wh (key)]
    dx = xs[:, None] - xs[None, :] + tw - 1  # [Ww (query), Ww (key)]
    n = wh * ww
    t = rel_pos_table_len((th, tw))
    index = torch.empty(n + 1, n + 1, dtype=torch.long)
    index[1:, 1:].view(wh, ww, wh, ww).copy_(dy[:, None, :, None] + dx[None, :, None, :])
    index[0, :] = t - 3
    index[:, 0] = t - 2
    index[0, 0] = t - 1
    return index


def gather_rel_pos_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table`` [T, nH] gathered with ``index`` [M, M] -> bias [nH, M, M]."""
    m = index.shape[0]
    bias = table[index.reshape(-1)].reshape(m, m, -1)  # [M, M, nH]
    return bias.permute(2, 0, 1).contiguous()  # [nH, M, M]


class RelativePositionBias(nn.Module):
    """Relative position bias shared by all blocks (key ``rel_pos_bias.*``).

    Args:
        window_size (int | tuple[int, int]): patch grid (Wh, Ww).
        num_heads (int): number of attention heads.
    """

    def __init__(self, window_size: GridT, num_heads: int):
        super().__init__()
        self.window_size = to_2tuple(window_size)
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(rel_pos_table_len(self.window_size), num_heads))  # [T, nH]
        self.register_buffer(
            'relative_position_index', build_relative_position_index(self.window_size),
            persistent=False)

    def forward(self, index: torch.Tensor = None) -> torch.Tensor:
        """Return the bias [nH, N+1, N+1]; ``index`` overrides the model grid's index (a
        smaller grid, see :func:`build_relative_position_index`)."""
        return gather_rel_pos_bias(self.relative_position_bias_table,
                                   self.relative_position_index if index is None else index)

    def extra_repr(self) -> str:
        return f'window_size={self.window_size}, num_heads={self.num_heads}'


# ----------------------------------------------------------------------------------------
# Geometric-progression resize (unilm run_class_finetuning.py)
# ----------------------------------------------------------------------------------------
def _geo_sum(q: float, n: int) -> float:
    """1 + q + ... + q^(n-1), with the closed form the reference code uses."""
    return float(n) if q == 1.0 else (1.0 - q ** n) / (1.0 - q)


def geometric_ratio(src_size: int, dst_size: int) -> float:
    """Ratio q with 1 + q + ... + q^(n-1) = dst_size // 2, n = src_size // 2.

    ``src_size``/``dst_size`` are axis lengths of the table (2W-1). For an upscale whose
    solution lies in [1.01, 1.5] this is the official bisection (stop when the bracket is
    < 1e-6, return the last midpoint), so q matches the reference bit for bit; other cases
    (downscale, tiny or huge ratios) bisect on a wider bracket. Equal halves give q = 1.
    """
    n, target = src_size // 2, dst_size // 2
    if n == target or n <= 1:
        return 1.0
    left, right = 1.01, 1.5
    if not _geo_sum(left, n) <= target <= _geo_sum(right, n):
        if target < n:
            left, right = 1e-9, 1.0
        else:
            left, right = 1.0 + 1e-12, 1.5
            while _geo_sum(right, n) < target:
                right *= 2.0
    q = (left + right) / 2.0
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if _geo_sum(q, n) > target:
            right = q
        else:
            left = q
    return q


def geometric_axis(src_size: int, dst_size: int) -> torch.Tensor:
    """Source sample positions (float64, ``src_size`` points) on the target's integer axis.

    d_0 = 1, d_k = d_(k-1) + q^k; the axis is (-d_(n-1), ..., -d_0, 0, d_0, ..., d_(n-1)).
    """
    n = src_size // 2
    q = geometric_ratio(src_size, dst_size)
    dis, cur = [], 1.0
    for i in range(n):
        dis.append(cur)
        cur += q ** (i + 1)
    pos = torch.tensor(dis, dtype=torch.float64)
    return torch.cat([-pos.flip(0), torch.zeros(1, dtype=torch.float64), pos])


def cubic_spline_matrix(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Matrix W [len(xq), len(x)] with ``W @ f`` = not-a-knot cubic spline through (x, f)
    evaluated at ``xq`` (float64). Queries outside [x0, x_end] are clamped (as FITPACK does).

    With fewer than 4 points the spline degenerates to the interpolating polynomial
    (degree len(x)-1), which is what FITPACK gives with k = len(x)-1.
    """
    x = x.to(torch.float64)
    xq = xq.to(torch.float64).clamp(x[0], x[-1])
    n = x.numel()
    if n < 4:  # Lagrange polynomial of degree n-1
        w = torch.ones(xq.numel(), n, dtype=torch.float64)
        for j in range(n):
            for m in range(n):
                if m != j:
                    w[:, j] *= (xq - x[m]) / (x[j] - x[m])
        return w
    h = x[1:] - x[:-1]  # [n-1]
    # Linear system A @ M = B @ f for the second derivatives M.
    a = torch.zeros(n, n, dtype=torch.float64)
    b = torch.zeros(n, n, dtype=torch.float64)
    for i in range(1, n - 1):
        a[i, i - 1], a[i, i], a[i, i + 1] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
        b[i, i - 1], b[i, i], b[i, i + 1] = 6 / h[i - 1], -6 / h[i - 1] - 6 / h[i], 6 / h[i]
    # not-a-knot: the third derivative is continuous at x_1 and x_(n-2)
    a[0, 0], a[0, 1], a[0, 2] = h[1], -(h[0] + h[1]), h[0]
    a[-1, -3], a[-1, -2], a[-1, -1] = h[-1], -(h[-2] + h[-1]), h[-2]
    m_mat = torch.linalg.solve(a, b)  # [n, n]: M = m_mat @ f
    seg = torch.searchsorted(x, xq, right=True).sub(1).clamp(0, n - 2)  # [Q]
    x0, x1, hs = x[seg], x[seg + 1], h[seg]
    u, v = (x1 - xq), (xq - x0)  # distances to the segment ends
    eye = torch.eye(n, dtype=torch.float64)
    f0, f1, m0, m1 = eye[seg], eye[seg + 1], m_mat[seg], m_mat[seg + 1]  # [Q, n]
    return ((u ** 3 / (6 * hs))[:, None] * m0 + (v ** 3 / (6 * hs))[:, None] * m1
            + (u / hs)[:, None] * f0 - (u * hs / 6)[:, None] * m0
            + (v / hs)[:, None] * f1 - (v * hs / 6)[:, None] * m1)


def resize_rel_pos_table(table: torch.Tensor, src_grid: GridT,
                         dst_grid: GridT) -> torch.Tensor:
    """Resize a relative position table [T_src, nH] from ``src_grid`` to ``dst_grid``.

    The procedure of unilm beit/run_class_finetuning.py (docs/method.md "Changing the
    resolution"), generalised to rectangular grids: each axis of the (2Wh-1) x (2Ww-1) body
    gets its own ratio q (:func:`geometric_ratio`), source samples sit at the geometric
    positions (:func:`geometric_axis`) and are interpolated onto the integer target offsets
    -(S'//2) ... S'//2. An axis whose size does not change keeps its integer axis (identity
    along it). The extra rows after the body (the 3 cls entries) are kept unchanged.

    Interpolation: a tensor-product, not-a-knot cubic interpolating spline computed in
    float64 torch (:func:`cubic_spline_matrix`). This is what the reference ``scipy``
    ``interp2d(kind='cubic')`` computed on a rectilinear grid (FITPACK ``regrid`` with
    k=3, s=0, whose knots are the interior data points = the not-a-knot spline, evaluated
    with clamping at the ends), and equals ``RectBivariateSpline(kx=ky=3, s=0)`` (see the
    tests). ``interp2d`` was removed from SciPy; doing it in torch keeps scipy out of the
    runtime, runs on any device and is exact for a separable product spline. For a square
    grid this reduces to the official procedure.

    Returns:
        Tensor [(2Hd-1)(2Wd-1) + extras, nH] with the dtype/device of ``table``.
    """
    hs, ws = to_2tuple(src_grid)
    hd, wd = to_2tuple(dst_grid)
    sy, sx, dy, dx = 2 * hs - 1, 2 * ws - 1, 2 * hd - 1, 2 * wd - 1
    extras = table.shape[0] - sy * sx
    if extras < 0:
        raise ValueError(f'table of length {table.shape[0]} is too short for grid {src_grid}')
    if (sy, sx) == (dy, dx):
        return table.clone()
    num_heads = table.shape[1]
    body = table[:sy * sx].to(torch.float64).t().reshape(num_heads, sy, sx)  # [nH, Sy, Sx]
    mats = []
    for s, d in ((sy, dy), (sx, dx)):
        if s == d:
            mats.append(torch.eye(s, dtype=torch.float64))
            continue
        src_axis = geometric_axis(s, d)
        dst_axis = torch.arange(-(d // 2), d // 2 + 1, dtype=torch.float64)
        mats.append(cubic_spline_matrix(src_axis, dst_axis))
    wy, wx = (m.to(body.device) for m in mats)
    out = wy @ body @ wx.t()  # [nH, Dy, Dx]
    out = out.reshape(num_heads, dy * dx).t().to(table.dtype)  # [Dy*Dx, nH]
    return torch.cat([out, table[sy * sx:]], dim=0)


def resize_pos_embed(pos_embed: torch.Tensor, src_grid: GridT, dst_grid: GridT,
                     num_extra_tokens: int = 1) -> torch.Tensor:
    """Bicubic (align_corners=False) resize of an absolute position embedding.

    ``pos_embed`` [1, extra + Hs*Ws, D] -> [1, extra + Hd*Wd, D]; the leading
    ``num_extra_tokens`` entries (the cls token) are kept as they are.
    """
    hs, ws = to_2tuple(src_grid)
    hd, wd = to_2tuple(dst_grid)
    if pos_embed.shape[1] != num_extra_tokens + hs * ws:
        raise ValueError(f'pos_embed with {pos_embed.shape[1]} tokens does not match grid '
                         f'{(hs, ws)} + {num_extra_tokens} extra tokens')
    if (hs, ws) == (hd, wd):
        return pos_embed.clone()
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(-1, hs, ws, dim).permute(0, 3, 1, 2).float()  # [1, D, Hs, Ws]
    grid = F.interpolate(grid, size=(hd, wd), mode='bicubic', align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, hd * wd, dim)  # [1, Hd*Wd, D]
    return torch.cat([extra, grid.to(pos_embed.dtype)], dim=1)
