"""BEiT / BEiT v2 vision transformer backbone (``BEiTViT``) and its reusable blocks.

Implements the backbone of BEiT (arXiv 2106.08254, section 2 and appendix) and BEiT v2
(arXiv 2208.06366) as unilm's beit/modeling_finetune.py builds it: patch embedding with
optional mask token, attention with q/v bias and relative position bias, blocks with
LayerScale and stochastic depth, pretraining-style initialisation, outputs and pooling, and
the checkpoint load path with resolution changes. State-dict keys follow unilm/timm exactly, see
docs/contracts.md.
"""
import math
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule, initialize

from mmbeit.checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    load_state_dict_checked,
    note_adapted,
    note_dropped,
    read_state_dict,
    take_prefix,
)
from mmbeit.registry import MODELS

from ..utils.arg_checks import check_number
from ..utils.init import trunc_normal_
from ..utils.rel_pos import (
    RelativePositionBias,
    build_relative_position_index,
    gather_rel_pos_bias,
    grid_from_table_len,
    rel_pos_table_len,
    resize_pos_embed,
    resize_rel_pos_table,
    to_2tuple,
)

__all__ = ['DropPath', 'BEiTAttention', 'BEiTMlp', 'BEiTBlock',
           'BEiTViT', 'beit_init_weights_', 'adapt_beit_state_dict_']


def beit_init_weights_(module: nn.Module, std: float = 0.02) -> None:
    """Pretraining init of unilm beit/modeling_pretrain.py on every sub-module of ``module``.

    Linear/Conv2d weights: trunc-normal with std ``std`` truncated at +-std (a=-std, b=std),
    biases 0; LayerNorm (1, 0). Parameters that are not in such layers are left alone.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=std, a=-std, b=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample with probability ``drop_prob``.

    Not mmcv's ``DropPath``: that one draws ``floor(keep + rand)`` in the input's dtype, so
    under bf16 autocast the keep rate is off (0.8985 for keep 0.9, measured on 4M draws)
    and ``drop_prob=1`` divides by zero; ``bernoulli_`` keeps the exact rate in any dtype.
    """

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep)  # [B,1,1]
        return x * mask / keep if keep > 0 else x * mask

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.4f}'


class BEiTAttention(nn.Module):
    """Multi-head self-attention of BEiT (unilm modeling_finetune.py).

    ``qkv`` is a Linear(D, 3D) without bias, applied with the bias cat(q_bias, 0, v_bias);
    q is scaled by head_dim**-0.5. With ``window_size`` set, the layer owns a relative
    position table ``relative_position_bias_table`` [T, nH] (key
    ``blocks.i.attn.relative_position_bias_table``); a shared bias can be passed to forward.

    With ``attn_window`` (wh, ww) set, attention is windowed (ViTDet; docs/method.md
    "Windowed attention for detection"): the patch grid is cut into non-overlapping
    wh x ww windows (the grid padded at the bottom / right to a multiple of the window,
    padded keys masked out), each patch query attends to [cls, the patches of its window],
    and the cls query attends to every token as in a global block. The own table (if any)
    is then for the window grid, so ``window_size`` must equal ``attn_window``.
    """

    def __init__(self, embed_dims: int, num_heads: int,
                 window_size: Optional[Union[int, Tuple[int, int]]] = None,
                 qv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.,
                 attn_window: Optional[Union[int, Tuple[int, int]]] = None):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by {num_heads} heads')
        self.attn_window = to_2tuple(attn_window) if attn_window is not None else None
        if (self.attn_window is not None and window_size is not None
                and to_2tuple(window_size) != self.attn_window):
            raise ValueError(f'a windowed attention layer indexes its relative position table '
                             f'on the window grid: window_size {window_size} must equal '
                             f'attn_window {attn_window}')
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.scale = self.head_dims ** -0.5
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=False)
        if qv_bias:
            self.q_bias = nn.Parameter(torch.zeros(embed_dims))
            self.v_bias = nn.Parameter(torch.zeros(embed_dims))
        else:
            self.q_bias = self.v_bias = None
        if window_size is not None:
            self.window_size = to_2tuple(window_size)
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(rel_pos_table_len(self.window_size), num_heads))  # [T, nH]
            self.register_buffer(
                'relative_position_index', build_relative_position_index(self.window_size),
                persistent=False)
        else:
            self.window_size = None
            self.relative_position_bias_table = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor):
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3C]
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dims).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # 3 x [B, nH, N, hd]

    def _bias(self, rel_pos_bias: Optional[torch.Tensor],
              rel_index: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        bias = None
        if self.relative_position_bias_table is not None:
            index = self.relative_position_index if rel_index is None else rel_index
            bias = gather_rel_pos_bias(self.relative_position_bias_table,
                                       index)  # [nH, N+1, N+1]
        if rel_pos_bias is not None:
            bias = rel_pos_bias if bias is None else bias + rel_pos_bias
        return bias

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor] = None,
                return_attn: bool = False, rel_index: Optional[torch.Tensor] = None,
                grid: Optional[Tuple[int, int]] = None):
        """x [B, N+1, C] -> [B, N+1, C]; ``rel_pos_bias`` [nH, N+1, N+1] is added to the
        logits. ``return_attn=True`` uses the explicit softmax path and also returns the
        attention map [B, nH, N+1, N+1]. ``rel_index`` [N+1, N+1] indexes the own table
        for an input grid smaller than the model's (None: the model grid). ``grid``
        (Hp, Wp) of the patch tokens: needed (only) by a windowed layer."""
        if self.attn_window is not None:
            return self._forward_windowed(x, rel_pos_bias, return_attn, grid)
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        bias = self._bias(rel_pos_bias, rel_index)
        drop = self.attn_drop if self.training else 0.
        if return_attn:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, nH, N, N]
            if bias is not None:
                attn = attn + bias
            attn = attn.softmax(dim=-1)
            out = F.dropout(attn, drop, self.training) @ v  # [B, nH, N, hd]
        else:
            if bias is not None:
                bias = bias.to(q.dtype)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=drop, scale=self.scale)  # [B, nH, N, hd]
        out = out.transpose(1, 2).reshape(b, n, c)  # [B, N, C]
        out = self.proj_drop(self.proj(out))
        return (out, attn) if return_attn else out


    # ---------------------------------------------------------------- windowed attention
    def _window_table_bias(self) -> Optional[torch.Tensor]:
        """The own table gathered on the window grid: [nH, L+1, L+1] (L = wh*ww), or None."""
        if self.relative_position_bias_table is None:
            return None
        return gather_rel_pos_bias(self.relative_position_bias_table,
                                   self.relative_position_index)

    def _forward_windowed(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor],
                          return_attn: bool, grid: Optional[Tuple[int, int]]):
        b, n1, c = x.shape
        if rel_pos_bias is not None:
            raise ValueError('a windowed attention layer takes no shared relative position '
                             "bias (it is for the full grid); build the model with "
                             "rel_pos_bias='per_layer' (a shared checkpoint table is expanded "
                             'into per-layer tables by the load path)')
        if grid is None or grid[0] * grid[1] + 1 != n1:
            raise ValueError(f'windowed attention needs the patch grid (Hp, Wp) of the '
                             f'{n1 - 1} patch tokens, got grid={grid}; pass grid=')
        q, k, v = self._qkv(x)  # 3 x [B, nH, N+1, hd]
        table_bias = self._window_table_bias()  # [nH, L+1, L+1] or None
        drop = self.attn_drop if self.training else 0.
        if return_attn:
            out, attn = _dense_window_attention(q, k, v, self.scale, grid, self.attn_window,
                                                table_bias, drop, self.training)
        else:
            out = _partitioned_window_attention(q, k, v, self.scale, grid, self.attn_window,
                                                table_bias, drop)
        out = out.transpose(1, 2).reshape(b, n1, c)  # [B, N+1, C]
        out = self.proj_drop(self.proj(out))
        return (out, attn) if return_attn else out


def _window_layout(grid: Tuple[int, int], window: Tuple[int, int]):
    """Padded grid (Ph, Pw) and window counts (nh, nw) of ``grid`` cut into ``window``s."""
    (hp, wp), (wh, ww) = grid, window
    nh, nw = -(-hp // wh), -(-wp // ww)
    return (nh * wh, nw * ww), (nh, nw)


def window_partition(t: torch.Tensor, grid: Tuple[int, int],
                     window: Tuple[int, int]) -> torch.Tensor:
    """Patch tokens t [B, nH, Hp*Wp, hd] -> windows [B, nWin, nH, wh*ww, hd]: the grid is
    zero-padded at the bottom / right to a multiple of the window, windows in row-major
    order, tokens row-major inside each window."""
    b, h, _, d = t.shape
    (hp, wp), (wh, ww) = grid, window
    (ph, pw), (nh, nw) = _window_layout(grid, window)
    t = t.reshape(b, h, hp, wp, d)
    if (ph, pw) != (hp, wp):
        t = F.pad(t, (0, 0, 0, pw - wp, 0, ph - hp))  # [B, nH, Ph, Pw, hd]
    t = t.reshape(b, h, nh, wh, nw, ww, d).permute(0, 2, 4, 1, 3, 5, 6)
    return t.reshape(b, nh * nw, h, wh * ww, d)


def window_unpartition(t: torch.Tensor, grid: Tuple[int, int],
                       window: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B, nWin, nH, wh*ww, hd] -> [B, nH, Hp*Wp, hd],
    the padding removed."""
    b, _, h, _, d = t.shape
    (hp, wp), (wh, ww) = grid, window
    (ph, pw), (nh, nw) = _window_layout(grid, window)
    t = t.reshape(b, nh, nw, h, wh, ww, d).permute(0, 3, 1, 4, 2, 5, 6)
    t = t.reshape(b, h, ph, pw, d)[:, :, :hp, :wp]
    return t.reshape(b, h, hp * wp, d)


def _cls_row_bias(table_bias: Optional[torch.Tensor], n: int, like: torch.Tensor
                  ) -> Optional[torch.Tensor]:
    """Bias of the cls query over [cls, N patches]: [nH, 1, N+1] (cls->cls, cls->token)."""
    if table_bias is None:
        return None
    row = table_bias[:, 0, :2]  # [nH, 2]: cls->cls, cls->token (the same for every patch)
    return torch.cat([row[:, :1], row[:, 1:2].expand(-1, n)], dim=1)[:, None].to(like.dtype)


def _partitioned_window_attention(q, k, v, scale, grid, window, table_bias, drop):
    """Fast path of windowed attention (SDPA per window). q, k, v [B, nH, N+1, hd] ->
    [B, nH, N+1, hd]."""
    n = grid[0] * grid[1]
    qw, kw, vw = (window_partition(t[:, :, 1:], grid, window) for t in (q, k, v))
    nwin = qw.shape[1]
    kw = torch.cat([k[:, None, :, :1].expand(-1, nwin, -1, -1, -1), kw], dim=3)
    vw = torch.cat([v[:, None, :, :1].expand(-1, nwin, -1, -1, -1), vw], dim=3)
    # keys: [cls, window patches]; padded patches are masked out
    valid = torch.ones(1, 1, *grid, dtype=q.dtype, device=q.device)
    valid = window_partition(valid.reshape(1, 1, n, 1), grid, window)[0, :, 0, :, 0]
    mask = torch.zeros_like(valid).masked_fill_(valid == 0, float('-inf'))  # [nWin, L]
    mask = F.pad(mask, (1, 0))[:, None, None]  # [nWin, 1, 1, L+1]
    bias = mask if table_bias is None else mask + table_bias[None, :, 1:].to(q.dtype)
    # 4-D [B*nWin, nH, ., hd] so that SDPA can pick a fused kernel (5-D falls back to math)
    b, _, h, length, d = qw.shape
    bias = bias.expand(b, -1, h, length, -1).reshape(b * nwin, h, length, length + 1)
    out = F.scaled_dot_product_attention(
        qw.reshape(b * nwin, h, length, d), kw.reshape(b * nwin, h, length + 1, d),
        vw.reshape(b * nwin, h, length + 1, d), attn_mask=bias, dropout_p=drop,
        scale=scale)  # [B*nWin, nH, L, hd]
    patches = window_unpartition(out.reshape(b, nwin, h, length, d), grid,
                                 window)  # [B, nH, N, hd]
    cls = F.scaled_dot_product_attention(q[:, :, :1], k, v,
                                         attn_mask=_cls_row_bias(table_bias, n, q),
                                         dropout_p=drop, scale=scale)  # [B, nH, 1, hd]
    return torch.cat([cls, patches], dim=2)


def window_attention_index(grid: Tuple[int, int], window: Tuple[int, int]) -> torch.Tensor:
    """Dense [N+1, N+1] index into the window-grid bias [L+1, L+1] (flattened) of a
    windowed layer, -1 where a patch query may not see a patch key (other window)."""
    (hp, wp), (wh, ww) = grid, window
    ys, xs = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    win = (ys // wh) * -(-wp // ww) + xs // ww  # window id of each patch (row-major)
    local = 1 + (ys % wh) * ww + xs % ww  # token id inside its window (0 is cls)
    size = wh * ww + 1
    index = torch.full((hp * wp + 1, hp * wp + 1), -1, dtype=torch.long)
    same = win[:, None] == win[None, :]
    pair = local[:, None] * size + local[None, :]
    index[1:, 1:] = torch.where(same, pair, torch.full_like(pair, -1))
    index[0, 0] = 0
    index[0, 1:] = 1  # cls -> any patch: the window grid's cls->token entry
    index[1:, 0] = local * size  # patch -> cls
    return index


def _dense_window_attention(q, k, v, scale, grid, window, table_bias, drop, training):
    """Explicit-softmax windowed attention on the full [N+1, N+1] matrix (zero outside
    the windows): the map for visualisation, and the same output as the fast path."""
    index = window_attention_index(grid, window).to(q.device)
    bias = torch.zeros(index.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(index < 0, float('-inf'))[None]  # [1, N+1, N+1]
    if table_bias is not None:
        flat = table_bias.flatten(1).to(q.dtype)  # [nH, (L+1)^2]
        bias = bias + flat[:, index.clamp(min=0)]  # [nH, N+1, N+1]
    attn = ((q * scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)  # [B, nH, N+1, N+1]
    return F.dropout(attn, drop, training) @ v, attn


class BEiTMlp(nn.Module):
    """fc1 -> GELU -> fc2 -> dropout (keys ``mlp.fc1``, ``mlp.fc2``)."""

    def __init__(self, embed_dims: int, feedforward_channels: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, feedforward_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(feedforward_channels, embed_dims)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class BEiTBlock(nn.Module):
    """Pre-norm transformer block of BEiT (unilm modeling_finetune.py).

    x = x + DropPath(gamma_1 * Attn(norm1(x))); x = x + DropPath(gamma_2 * Mlp(norm2(x))).
    ``gamma_1``/``gamma_2`` [D] exist only when ``layer_scale_init_value > 0``. The FFN
    branch is dropped once (not twice as in mmpretrain). Keys match unilm/timm ``blocks.i``.

    Args:
        window_size: patch grid for a per-layer relative position table, or None.
        attn_window: windowed attention with windows of this many patches (see
            :class:`BEiTAttention`), or None for global attention.
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 window_size: Optional[Union[int, Tuple[int, int]]] = None,
                 qv_bias: bool = True, layer_scale_init_value: float = 0.1,
                 drop_path_rate: float = 0., drop_rate: float = 0.,
                 attn_drop_rate: float = 0., norm_eps: float = 1e-6,
                 attn_window: Optional[Union[int, Tuple[int, int]]] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.attn = BEiTAttention(embed_dims, num_heads, window_size, qv_bias,
                                  attn_drop_rate, drop_rate, attn_window)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.mlp = BEiTMlp(embed_dims, feedforward_channels, drop_rate)
        if layer_scale_init_value > 0:
            self.gamma_1 = nn.Parameter(torch.full((embed_dims, ), layer_scale_init_value))
            self.gamma_2 = nn.Parameter(torch.full((embed_dims, ), layer_scale_init_value))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, rel_pos_bias: Optional[torch.Tensor] = None,
                return_attn: bool = False, rel_index: Optional[torch.Tensor] = None,
                grid: Optional[Tuple[int, int]] = None):
        """x [B, N+1, D]; optional shared ``rel_pos_bias`` [nH, N+1, N+1]. With
        ``return_attn`` returns (x, attention map [B, nH, N+1, N+1]). ``grid``: the
        patch grid (Hp, Wp), needed by a windowed block."""
        y = self.attn(self.norm1(x), rel_pos_bias, return_attn, rel_index, grid)
        if return_attn:
            y, attn = y
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        x = x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)
        return (x, attn) if return_attn else x

    @torch.no_grad()
    def rescale_(self, layer_id: int) -> None:
        """Divide attn.proj.weight and mlp.fc2.weight by sqrt(2 * layer_id)."""
        self.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
        self.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))


class PatchEmbed(nn.Module):
    """Conv2d(in, D, k=p, s=p) patch embedding (key ``patch_embed.proj``).

    Not mmcv's ``PatchEmbed``, whose conv is ``projection``: the ``proj`` name is the
    unilm / timm key layout every converter and official checkpoint uses.
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # [B, D, H/p, W/p]


@MODELS.register_module()
class BEiTViT(BaseModule):
    """BEiT / BEiT v2 ViT backbone (unilm modeling_finetune.py; keys per docs/contracts.md).

    Args:
        arch (str | dict): 'tiny', 'small', 'base', 'large' (or t/s/b/l), or a dict with
            embed_dims, num_layers, num_heads, feedforward_channels.
        img_size (int | tuple): input (H, W). patch_size, in_channels: patch embedding.
        use_abs_pos_emb (bool): learnable absolute ``pos_embed`` [1, N+1, D].
        rel_pos_bias ('per_layer' | 'shared' | None): relative position tables.
        qv_bias (bool): learnable q/v biases. layer_scale_init_value (float): 0 disables.
        drop_path_rate (float): stochastic depth, linspace(0, rate, L) over blocks.
        out_indices (int | Sequence[int]): blocks whose output is returned (negative ok).
        out_type: 'cls_token' [B, D] (needs final_norm), 'avg_featmap' [B, D]
            (fc_norm of the mean patch token), 'featmap' [B, D, H/p, W/p], 'raw' [B, N+1, D],
            'cls_and_avg' [B, 2D] (the cls token and the mean patch token side by side,
            no norm: BEiT's linear-probe feature of an intermediate block).
        final_norm (bool): LN ``norm`` on the last block's output.
        use_mask_token (bool): learnable ``mask_token`` used by ``forward(x, mask)``.
        frozen_stages (int): -1 none; 0 embeddings; k also blocks 0..k-1 (kept in eval);
            L also the final norms and the shared relative table.
        with_cp (bool): activation checkpointing per block during training.
        window_size (int | tuple | None): windowed attention (ViTDet, docs/method.md
            "Windowed attention for detection"): patches per window side, e.g. 14 = the
            pretraining grid of 224 / 16. Needs ``window_block_indexes``.
        window_block_indexes (Sequence[int]): blocks (0-based, negative ok) that attend
            within windows; the others attend globally. Their relative position tables
            are for the window grid, those of the global blocks for the full grid.
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], dict(embed_dims=192, num_layers=12, num_heads=3,
                                            feedforward_channels=768)),
        **dict.fromkeys(['s', 'small'], dict(embed_dims=384, num_layers=12, num_heads=6,
                                             feedforward_channels=1536)),
        **dict.fromkeys(['b', 'base'], dict(embed_dims=768, num_layers=12, num_heads=12,
                                            feedforward_channels=3072)),
        **dict.fromkeys(['l', 'large'], dict(embed_dims=1024, num_layers=24, num_heads=16,
                                             feedforward_channels=4096)),
    }
    out_types = ('cls_token', 'avg_featmap', 'featmap', 'raw', 'cls_and_avg')

    def __init__(self, arch: Union[str, dict] = 'base', img_size=224, patch_size: int = 16,
                 in_channels: int = 3, use_abs_pos_emb: bool = False,
                 rel_pos_bias: Optional[str] = 'per_layer', qv_bias: bool = True,
                 layer_scale_init_value: float = 0.1, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 out_indices: Union[int, Sequence[int]] = -1, out_type: str = 'avg_featmap',
                 final_norm: bool = False, use_mask_token: bool = False,
                 frozen_stages: int = -1, with_cp: bool = False, norm_eps: float = 1e-6,
                 window_size: Optional[Union[int, Tuple[int, int]]] = None,
                 window_block_indexes: Sequence[int] = (),
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        if isinstance(arch, str):
            if arch.lower() not in self.arch_zoo:
                raise KeyError(f'unknown arch {arch!r}; choose from {set(self.arch_zoo)}')
            arch = self.arch_zoo[arch.lower()]
        needed = {'embed_dims', 'num_layers', 'num_heads', 'feedforward_channels'}
        if not isinstance(arch, dict) or not needed <= set(arch):
            raise ValueError(f'a custom arch must be a dict with keys {sorted(needed)}')
        self.embed_dims = arch['embed_dims']
        self.num_layers = arch['num_layers']
        self.num_heads = arch['num_heads']
        if rel_pos_bias not in ('per_layer', 'shared', None):
            raise ValueError(f"rel_pos_bias must be 'per_layer', 'shared' or None, "
                             f'got {rel_pos_bias!r}')
        if out_type not in self.out_types:
            raise ValueError(f'out_type must be one of {self.out_types}, got {out_type!r}')
        if out_type == 'cls_token' and not final_norm:
            raise ValueError("out_type='cls_token' needs final_norm=True")
        for name, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                           ('drop_path_rate', drop_path_rate)):
            check_number(rate, name, 'BEiTViT', low=0, high=1, high_open=True)
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.patch_resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.rel_pos_mode = rel_pos_bias
        self.out_type = out_type
        self.final_norm = final_norm
        self.with_cp = with_cp
        self.frozen_stages = frozen_stages

        dims = self.embed_dims
        self.patch_embed = PatchEmbed(in_channels, dims, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dims)) if use_mask_token else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches + 1, dims)) if use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(drop_rate)
        self.rel_pos_bias = RelativePositionBias(
            self.patch_resolution, self.num_heads) if rel_pos_bias == 'shared' else None
        self.window_size, self.window_block_indexes = self._check_windows(
            window_size, window_block_indexes)
        dpr = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        blocks = []
        for i in range(self.num_layers):
            attn_window = self.window_size if i in self.window_block_indexes else None
            table = (attn_window or self.patch_resolution) \
                if rel_pos_bias == 'per_layer' else None
            blocks.append(BEiTBlock(dims, self.num_heads, arch['feedforward_channels'], table,
                                    qv_bias, layer_scale_init_value, dpr[i], drop_rate,
                                    attn_drop_rate, norm_eps, attn_window))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dims, eps=norm_eps) if final_norm else None
        self.fc_norm = nn.LayerNorm(dims, eps=norm_eps) if out_type == 'avg_featmap' else None

        if isinstance(out_indices, int):
            out_indices = [out_indices]
        indices = []
        for idx in out_indices:
            real = idx + self.num_layers if idx < 0 else idx
            if not 0 <= real < self.num_layers:
                raise IndexError(f'out index {idx} out of range for {self.num_layers} layers')
            indices.append(real)
        self.out_indices = sorted(set(indices))
        self._index_cache = {}  # relative position indices of smaller input grids
        self._freeze_stages()

    def _check_windows(self, window_size, window_block_indexes):
        """Validate the windowed-attention arguments; (window (h, w) or None, sorted
        non-negative block indexes)."""
        indexes = list(window_block_indexes or ())
        if window_size is None and not indexes:
            return None, []
        if window_size is None or not indexes:
            raise ValueError(
                'BEiTViT windowed attention needs both window_size (patches per window '
                'side, e.g. 14) and window_block_indexes (the windowed blocks, e.g. '
                f'[0, 1, 3, 4, 6, 7, 9, 10]); got window_size={window_size!r}, '
                f'window_block_indexes={window_block_indexes!r}')
        window = to_2tuple(window_size)
        if min(window) < 1:
            raise ValueError(f'window_size must be positive, got {window_size!r}')
        if self.rel_pos_mode == 'shared':
            raise ValueError(
                "windowed attention needs rel_pos_bias='per_layer' (or None), not 'shared': "
                'one shared table cannot serve the window grid and the full grid; the load '
                'path expands a shared checkpoint table into per-layer tables')
        real = []
        for idx in indexes:
            r = idx + self.num_layers if isinstance(idx, int) and idx < 0 else idx
            if not isinstance(idx, int) or not 0 <= r < self.num_layers:
                raise IndexError(f'window_block_indexes: {idx!r} is not a block index of '
                                 f'{self.num_layers} blocks')
            real.append(r)
        return window, sorted(set(real))

    # ------------------------------------------------------------------ init / freezing
    def init_weights(self) -> None:
        """Pretraining init (unilm beit/modeling_pretrain.py; docs/method.md "Initialisation")
        without ``init_cfg``. With
        ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')`` the
        checkpoint is loaded by :meth:`load_pretrained` (checked, not mmengine's silent
        non-strict load); other init_cfg entries go to mmengine's initialisers."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c is not None and c not in pretrained]
        if self.init_cfg is not None and not pretrained:
            super().init_weights()
            return
        if pretrained:
            if len(pretrained) > 1:
                raise ValueError('BEiTViT init_cfg: give one Pretrained entry, got '
                                 f'{len(pretrained)}')
            if others:
                initialize(self, others)
            cfg = pretrained[0]
            unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location', 'allow_fresh'}
            if unknown or not cfg.get('checkpoint'):
                raise ValueError(
                    "BEiTViT init_cfg Pretrained takes checkpoint (required), prefix, "
                    f"map_location and allow_fresh; got {dict(cfg)}")
            #: What the Pretrained load did (a LoadReport: loaded, adapted, dropped, fresh).
            self.pretrained_report = self.load_pretrained(
                cfg['checkpoint'], cfg.get('prefix', ''), cfg.get('map_location', 'cpu'),
                cfg.get('allow_fresh', ()))
            self._is_init = True
            return
        beit_init_weights_(self)
        for p in (self.cls_token, self.mask_token, self.pos_embed):
            if p is not None:
                trunc_normal_(p, std=0.02, a=-0.02, b=0.02)
        for m in self.modules():
            table = getattr(m, 'relative_position_bias_table', None)
            if isinstance(table, nn.Parameter):
                nn.init.zeros_(table)
        for i, blk in enumerate(self.blocks):
            blk.rescale_(i + 1)
        self._is_init = True

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods = [self.patch_embed] + list(self.blocks[:self.frozen_stages])
        if self.frozen_stages >= self.num_layers:
            mods += [m for m in (self.norm, self.fc_norm, self.rel_pos_bias) if m is not None]
        return mods

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        for p in (self.cls_token, self.mask_token, self.pos_embed):
            if p is not None:
                p.requires_grad = False
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def _grid_extras(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        """Check an input patch grid against the model and return the relative position
        index for it (None for the model grid). A grid no larger than the model's on
        either axis indexes the same tables exactly (sliding-window crops at an image
        border, small images); a larger one needs a model built for it."""
        if grid == self.patch_resolution or self.rel_pos_mode is None:
            return None
        if grid[0] > self.patch_resolution[0] or grid[1] > self.patch_resolution[1]:
            raise ValueError(
                f'input patch grid {grid} is larger than the model grid '
                f'{self.patch_resolution} (img_size={self.img_size}, patch_size='
                f'{self.patch_size}); build the model with img_size >= the input size: '
                'the load path resizes the relative position tables of a checkpoint')
        key = (grid, str(self.cls_token.device))
        if key not in self._index_cache:
            self._index_cache[key] = build_relative_position_index(
                grid, self.patch_resolution).to(self.cls_token.device)
        return self._index_cache[key]

    def _embed(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, D, Hp, Wp]
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        b, n, _ = x.shape
        if mask is not None:
            if self.mask_token is None:
                raise ValueError('a mask was given but the model has no mask token; '
                                 'build it with use_mask_token=True')
            if tuple(mask.shape) not in ((b, n), (b, ) + grid):
                raise ValueError(f'mask must have shape [B, N] = {[b, n]} or [B, Hp, Wp] = '
                                 f'{[b, *grid]}, got {list(mask.shape)}')
            w = mask.reshape(b, n, 1).to(x.dtype)  # [B, N, 1]
            x = x * (1. - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)  # [B, N+1, D]
        if self.pos_embed is not None:
            pos = self.pos_embed
            if grid != self.patch_resolution:
                pos = resize_pos_embed(pos, self.patch_resolution, grid)  # [1, N+1, D]
            x = x + pos.to(x.dtype)
        return self.pos_drop(x)

    def _format_output(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self.out_type == 'raw':
            return x  # [B, N+1, D]
        if self.out_type == 'cls_token':
            return x[:, 0]  # [B, D]
        patches = x[:, 1:]  # [B, N, D]
        if self.out_type == 'cls_and_avg':
            return torch.cat([x[:, 0], patches.mean(dim=1)], dim=-1)  # [B, 2D]
        if self.out_type == 'featmap':
            b, _, d = patches.shape
            return patches.reshape(b, *grid, d).permute(0, 3, 1, 2)  # [B, D, Hp, Wp]
        return self.fc_norm(patches.mean(dim=1))  # [B, D]

    def shared_rel_pos_bias(self, index: Optional[torch.Tensor] = None
                            ) -> Optional[torch.Tensor]:
        """The shared relative position bias [nH, N+1, N+1] (rel_pos_bias='shared'), else
        None. Extra blocks that run on this grid (the BEiT v2 neck) use it too. ``index``:
        that of a smaller input grid (see ``_grid_extras``)."""
        return self.rel_pos_bias(index) if self.rel_pos_bias is not None else None

    def forward_layers(self, x: torch.Tensor, layers: Sequence[int],
                       mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Token states [B, N+1, D] after each block in ``layers`` (0-based, negative ok),
        *before* any final norm, in the order given. Pretraining uses this: BEiT v2 needs
        the un-normalised last cls token and an early layer's patch tokens."""
        want = [i + self.num_layers if i < 0 else i for i in layers]
        if any(not 0 <= i < self.num_layers for i in want):
            raise IndexError(f'layers {list(layers)} out of range for {self.num_layers} blocks')
        return self._run_blocks(x, mask, set(want), lambda i, t: t, want)

    def _prepare(self, x: torch.Tensor, mask: Optional[torch.Tensor]):
        """Embed ``x`` and return (tokens [B, N+1, D], shared bias or None, relative
        position index of the input grid or None for the model grid, patch grid)."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        index = self._grid_extras(grid)
        return self._embed(x, mask), self.shared_rel_pos_bias(index), index, grid

    def _run_blocks(self, x, mask, keep, fmt, order) -> List[torch.Tensor]:
        x, shared, index, grid = self._prepare(x, mask)
        states = {}
        for i, blk in enumerate(self.blocks[:max(keep) + 1]):
            if self.with_cp and self.training:
                x = cp.checkpoint(blk, x, shared, False, index, grid, use_reentrant=False)
            else:
                x = blk(x, shared, rel_index=index, grid=grid)
            if i in keep:
                states[i] = fmt(i, x)
        return [states[i] for i in order]

    def forward(self, x: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        """x [B, C, H, W], optional bool ``mask`` [B, N] (or [B, Hp, Wp]) of patches to
        replace by the mask token. Returns one output per out index (see ``out_type``);
        ``norm`` is applied to the last block's output when ``final_norm``."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)

        def fmt(i: int, t: torch.Tensor) -> torch.Tensor:
            if i == self.num_layers - 1 and self.norm is not None:
                t = self.norm(t)
            return self._format_output(t, grid)

        return tuple(self._run_blocks(x, mask, set(self.out_indices), fmt, self.out_indices))

    def get_attention_maps(self, x: torch.Tensor,
                           mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Attention probabilities of every block, each [B, nH, N+1, N+1], computed with
        the explicit softmax(q k^T * scale + bias) path (for visualisation). A windowed
        block's map is zero between patches of different windows."""
        x, shared, index, grid = self._prepare(x, mask)
        maps = []
        for blk in self.blocks:
            x, attn = blk(x, shared, return_attn=True, rel_index=index, grid=grid)
            maps.append(attn)
        return maps

    # ------------------------------------------------------------------ layer decay
    def get_layer_depth(self, name: str, prefix: str = '') -> int:
        """Layer id for layer-wise lr decay (docs/contracts.md): 0 for cls_token,
        mask_token, pos_embed, patch_embed.*; i+1 for blocks.i.*; L+1 otherwise."""
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        if name in ('cls_token', 'mask_token', 'pos_embed') or name.startswith('patch_embed'):
            return 0
        if name.startswith('blocks.'):
            return int(name.split('.')[1]) + 1
        return self.num_layers + 1

    # ------------------------------------------------------------------ load path
    def adapt_state_dict(self, state_dict: Dict[str, torch.Tensor],
                         prefix: str = '') -> Dict[str, torch.Tensor]:
        """Return a copy of ``state_dict`` transformed for this model by the load path
        (see :func:`adapt_beit_state_dict_`); keys under other prefixes are kept."""
        out = OrderedDict(state_dict)
        adapt_beit_state_dict_(self, out, prefix)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        adapt_beit_state_dict_(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    #: What a pretrained checkpoint may lack, and why it may then stay at its init; each
    #: only while it trains (a frozen linear probe's norm must come from the file).
    PRETRAINED_MAY_LACK = {
        'fc_norm.': 'pooling norm of a fine-tuned model, trains from its init',
        'norm.': 'final norm, trains from its init',
        'mask_token': 'pretraining mask token, trains from its init',
    }

    def pretrained_fresh_ok(self, allow_fresh: Sequence[str] = ()) -> Dict[str, str]:
        """The keys a ``Pretrained`` checkpoint may lack (see :attr:`PRETRAINED_MAY_LACK`):
        those of parameters that train, plus the config's ``allow_fresh`` patterns."""
        params = dict(self.named_parameters())
        out = {}
        for pattern, why in self.PRETRAINED_MAY_LACK.items():
            names = [n for n in params if n == pattern or
                     (pattern.endswith('.') and n.startswith(pattern))]
            if names and all(params[n].requires_grad for n in names):
                out[pattern] = why
        for pattern in allow_fresh:
            out[pattern] = "named in init_cfg's allow_fresh"
        return out

    def load_pretrained(self, checkpoint: str, prefix: str = '', map_location='cpu',
                        allow_fresh: Sequence[str] = ()) -> LoadReport:
        """Load backbone weights from ``checkpoint`` and check that they fit.

        Accepted: any mmbeit checkpoint (pretraining, classifier, segmentor; keys under
        ``prefix``, typically ``'backbone.'``), or a bare backbone state dict in the
        unilm / timm layout (official releases), used as is when no key carries the
        prefix. The load path then expands, resizes and drops what it must (see
        :func:`adapt_beit_state_dict_`). In a bare file the parts that are not the backbone
        (``lm_head``, v2 ``cls_pt_layers``, a classifier ``head``) are dropped; so is, in
        any file, an ``fc_norm`` this model lacks (a classifier checkpoint loaded into a
        segmentation backbone).

        What may stay fresh is declared by :meth:`pretrained_fresh_ok`: the pooling norm,
        final norm and mask token while they train, and the patterns of ``allow_fresh``
        (``init_cfg=dict(type='Pretrained', ..., allow_fresh=['norm.'])``). Anything else
        missing, unexpected or of another shape raises
        :class:`~mmbeit.checkpoint.CheckpointMismatchError` naming the file and the keys.
        One table of what was loaded, adapted, dropped and left fresh is logged.
        """
        state_dict = read_state_dict(checkpoint, map_location=map_location)
        source = f'{checkpoint!r} (prefix {prefix!r})'
        picked = take_prefix(state_dict, prefix) if prefix else OrderedDict(state_dict)
        dropped = []
        if not picked:
            if 'patch_embed.proj.weight' not in state_dict:
                raise CheckpointMismatchError(
                    f'{checkpoint!r}: no key starts with {prefix!r} and the file is not a '
                    f'bare BEiT backbone either (first keys: {list(state_dict)[:5]}). Convert '
                    'it with tools/model_converters/convert_checkpoint.py, or set the prefix '
                    'of init_cfg to the one its backbone keys carry.')
            picked = OrderedDict(state_dict)
            source = f'{checkpoint!r} (no key starts with {prefix!r}: a bare backbone)'
            groups = ('lm_head', 'cls_pt_layers', 'head')
            for group in groups:
                keys = [k for k in picked if k.split('.')[0] == group]
                for k in keys:
                    del picked[k]
                if keys:
                    dropped.append((f'{group}.* ({len(keys)})', 'not part of the backbone'))
        if self.mask_token is None and picked.pop('mask_token', None) is not None:
            dropped.append(('mask_token', 'a pretraining parameter; this model has none '
                            '(use_mask_token=False)'))
        if self.norm is None:
            keys = [k for k in picked if k.startswith('norm.')]
            for k in keys:
                del picked[k]
            if keys:
                dropped.append(('norm.*', 'this model has no final norm (final_norm=False: '
                                'mean pooling uses fc_norm, segmentation the block outputs)'))
        if self.fc_norm is None:
            keys = [k for k in picked if k.startswith('fc_norm.')]
            for k in keys:
                del picked[k]
            if keys:
                dropped.append(('fc_norm.*', 'a classifier\'s pooling norm; this backbone has '
                                f'none (out_type={self.out_type!r})'))
        report = load_state_dict_checked(
            self, picked, source=source, fresh_ok=self.pretrained_fresh_ok(allow_fresh),
            target=self._describe(), log=False,
            hint='Match the backbone settings to the checkpoint, convert it with '
            'tools/model_converters/convert_checkpoint.py, or, for a parameter that may '
            "train from its init, name it in init_cfg's allow_fresh.")
        report.dropped[:0] = dropped
        print_log(report.table(), logger='current')
        return report

    def _describe(self) -> str:
        scale = 'on' if self.blocks[0].gamma_1 is not None else 'off'
        windows = '' if self.window_size is None else \
            f', windows {self.window_size} in blocks {self.window_block_indexes}'
        return (f'BEiTViT (arch {self.embed_dims}x{self.num_layers}, rel_pos_bias='
                f'{self.rel_pos_mode!r}, layer scale {scale}{windows})')


# ---------------------------------------------------------------------------------------
# Load path (docs/contracts.md, unilm run_class_finetuning.py)
# ---------------------------------------------------------------------------------------
_BLOCK_TABLE = re.compile(r'blocks\.\d+\.attn\.relative_position_bias_table')


def _grid_from_num_patches(num: int, like: Tuple[int, int]) -> Tuple[int, int]:
    """A (H, W) grid with H*W = num: square if possible, else the aspect closest to like."""
    side = math.isqrt(num)
    if side * side == num:
        return (side, side)
    cands = [(h, num // h) for h in range(1, num + 1) if num % h == 0]
    return min(cands, key=lambda g: abs(math.log(g[0] / g[1]) - math.log(like[0] / like[1])))


def _block_ids(keys: Sequence[str]) -> List[int]:
    """[i, ...] of ``...blocks.i.attn...`` keys."""
    return [int(re.search(r'blocks\.(\d+)\.attn', k).group(1)) for k in keys]


def adapt_beit_state_dict_(model: BEiTViT, state_dict: Dict[str, torch.Tensor],
                           prefix: str = '') -> None:
    """Transform ``state_dict`` IN PLACE so that ``model`` can load it (keys under
    ``prefix``; other keys are not touched). Steps, each logged:

    1. drop every ``*relative_position_index`` (non-persistent, rebuilt from the grid);
    2. shared table -> per-layer tables when the model is per-layer (unilm
       run_class_finetuning.py); if
       the checkpoint has per-layer tables while the model wants a shared one, raise;
    3. resize relative tables (geometric bicubic) and ``pos_embed`` (bicubic) whose grid
       differs from the model's; the source grid is taken as square when it can be. A
       windowed block's table is sized for its window grid (kept as it is when the file's
       grid is the window, and said so), a global block's for the full grid;

    Each step is recorded with :func:`~mmbeit.checkpoint.note_adapted` /
    :func:`~mmbeit.checkpoint.note_dropped` (in the load's report table, or the log).
    Anything else that does not fit is left for the strict check to report: a whole-model
    load keeps a ``mask_token`` / ``norm`` the model lacks as unexpected keys; only
    :meth:`BEiTViT.load_pretrained` drops those of a pretraining file.
    """
    grid = model.patch_resolution
    index_keys = [k for k in state_dict
                  if k.startswith(prefix) and k.endswith('relative_position_index')]
    for k in index_keys:
        del state_dict[k]
    if index_keys:
        note_dropped(f'{prefix}*relative_position_index ({len(index_keys)})',
                     'non-persistent buffers, rebuilt from the patch grid')

    shared_key = prefix + 'rel_pos_bias.relative_position_bias_table'
    layer_keys = [k for k in state_dict
                  if k.startswith(prefix) and _BLOCK_TABLE.fullmatch(k[len(prefix):])]
    if model.rel_pos_mode == 'per_layer' and shared_key in state_dict:
        table = state_dict.pop(shared_key)
        if layer_keys:
            note_dropped(shared_key, 'the checkpoint also has per-layer tables')
        else:
            for i in range(model.num_layers):
                state_dict[f'{prefix}blocks.{i}.attn.relative_position_bias_table'] = \
                    table.clone()
            note_adapted(shared_key, f'expanded into {model.num_layers} per-layer tables '
                         f'{prefix}blocks.i.attn.relative_position_bias_table')
    elif model.rel_pos_mode == 'shared' and layer_keys:
        raise CheckpointMismatchError(
            f'the checkpoint has per-layer relative position tables ({layer_keys[0]}, ...) '
            "but the model uses one shared table (rel_pos_bias='shared'); per-layer tables "
            "cannot be merged into a shared one: build the model with "
            "rel_pos_bias='per_layer'")

    src_grid = None
    if model.rel_pos_mode is not None:
        # each table is sized for its block: the window grid in a windowed block, else the
        # full grid (the shared table: the full grid)
        targets = [(shared_key, grid)] if model.rel_pos_mode == 'shared' else [
            (f'{prefix}blocks.{i}.attn.relative_position_bias_table',
             blk.attn.window_size) for i, blk in enumerate(model.blocks)]
        windowed = {f'{prefix}blocks.{i}.attn.relative_position_bias_table'
                    for i in getattr(model, 'window_block_indexes', ())}
        resized: Dict[tuple, List[str]] = OrderedDict()
        kept = []
        for k, dst in targets:
            t = state_dict.get(k)
            if t is None or t.ndim != 2 or t.shape[1] != model.num_heads:
                continue
            if t.shape[0] == rel_pos_table_len(dst):
                if k in windowed:
                    kept.append(k)
                continue
            src = grid_from_table_len(t.shape[0], like=dst)
            state_dict[k] = resize_rel_pos_table(t, src, dst)
            resized.setdefault((src, dst), []).append(k)
            if dst == grid or src_grid is None:
                src_grid = src
        if kept:
            note_adapted(f'{len(kept)} relative position table(s) of windowed blocks '
                         f'{_block_ids(kept)}',
                         f'kept as in the file: their window grid {model.window_size} is '
                         'the grid the file was made for (no resize)')
        for (src, dst), keys in resized.items():
            which = f' of {"windowed" if keys[0] in windowed else "global"} blocks ' \
                f'{_block_ids(keys)}' if windowed else ''
            note_adapted(f'{len(keys)} relative position table(s){which}',
                         f'resized from grid {src} to {dst} (geometric-progression bicubic)')

    pos_key = prefix + 'pos_embed'
    pos = state_dict.get(pos_key)
    if (model.pos_embed is not None and pos is not None and pos.ndim == 3
            and pos.shape[1] != model.num_patches + 1 and pos.shape[2] == model.embed_dims):
        num = pos.shape[1] - 1
        src = src_grid if src_grid and src_grid[0] * src_grid[1] == num else \
            _grid_from_num_patches(num, grid)
        state_dict[pos_key] = resize_pos_embed(pos, src, grid)
        note_adapted(pos_key, f'resized from grid {src} to {grid} (bicubic)')

