"""Infer the ``BEiTViT`` settings of a backbone state dict from its keys and shapes.

So that a checkpoint can be evaluated without the config it was trained with
(``tools/analysis_tools/knn_eval.py``): every setting that changes the key set or a
shape is read off the state dict (key layout: docs/contracts.md, "BEiTViT").

=======================  ===============================================================
setting                  read from
=======================  ===============================================================
embed_dims, patch_size,  ``patch_embed.proj.weight`` [D, C, p, p]
in_channels
num_layers               the ``blocks.i.`` indices (0 .. L-1, none missing)
num_heads                the second dim of a relative position table [T, nH]; a model
                         without one needs ``num_heads`` given
feedforward_channels     ``blocks.0.mlp.fc1.weight`` [F, D] (the same in every block)
rel_pos_bias             ``rel_pos_bias.relative_position_bias_table`` -> 'shared',
                         ``blocks.i.attn.relative_position_bias_table`` -> 'per_layer',
                         neither -> None
img_size                 the grid of a relative table (T = (2h-1)(2w-1)+3) or of
                         ``pos_embed`` [1, h*w+1, D], times the patch size; square when
                         it can be (a non-square table does not tell its orientation:
                         h <= w is taken); neither present: ``img_size`` must be given
use_abs_pos_emb          ``pos_embed``
qv_bias                  ``blocks.0.attn.q_bias``
layer_scale_init_value   ``blocks.0.gamma_1`` present -> 0.1 (the value is overwritten
                         by the load; only presence matters), else 0
use_mask_token           ``mask_token``
final_norm               ``norm.weight``
out_type                 'avg_featmap' when ``fc_norm.weight`` is present (BEiTViT
                         builds fc_norm only for that output), else 'cls_token' with a
                         final norm, else 'raw'
=======================  ===============================================================

Not inferable and left at BEiTViT's defaults: ``norm_eps`` (1e-6 in every BEiT release)
and the regularisation rates (no parameters).
"""
import re
from typing import Dict, Mapping, Optional, Union

import torch

from ..utils.rel_pos import grid_from_table_len, to_2tuple

__all__ = ['arch_from_state_dict', 'ArchInferenceError']

_BLOCK = re.compile(r'blocks\.(\d+)\.')
SHARED_TABLE = 'rel_pos_bias.relative_position_bias_table'
LAYER_TABLE = 'blocks.{}.attn.relative_position_bias_table'


class ArchInferenceError(ValueError):
    """A setting of ``BEiTViT`` cannot be read off a state dict (the message says which
    and what to pass instead)."""


def _square_grid(num: int) -> Optional[int]:
    side = int(round(num ** 0.5))
    return side if side * side == num else None


def arch_from_state_dict(state_dict: Mapping[str, torch.Tensor],
                         num_heads: Optional[int] = None,
                         img_size: Optional[Union[int, tuple]] = None) -> Dict:
    """``BEiTViT`` keyword arguments that build a model with exactly the keys and shapes
    of ``state_dict`` (a backbone state dict: no ``backbone.`` prefix; see the module
    docstring for where each setting comes from).

    Args:
        state_dict: the backbone's tensors (``relative_position_index`` buffers may be
            present; they are ignored).
        num_heads: needed only when the state dict has no relative position table; it
            must then divide embed_dims. Given next to a table, it must agree with it.
        img_size: overrides the input size read from the tables / ``pos_embed`` (the load
            path then resizes them); needed when the state dict has neither.

    Raises:
        ArchInferenceError (a ``ValueError``): naming what cannot be inferred or what is
        inconsistent, and the argument (``num_heads=``, ``img_size=``; ``--num-heads`` /
        ``--img-size`` in knn_eval.py) or conversion that fixes it.
    """
    sd = state_dict
    proj = sd.get('patch_embed.proj.weight')
    if proj is None or proj.ndim != 4:
        first = list(sd)[:5]
        hint = (" (its keys carry 'backbone.': take that prefix off first)"
                if any(k.startswith('backbone.patch_embed') for k in sd) else '')
        raise ArchInferenceError(
            f'not a BEiTViT state dict: no 4-d patch_embed.proj.weight (first keys: {first})'
            f'{hint}. A checkpoint of another codebase (unilm, timm, HF, mmpretrain, mmseg) '
            'must be converted first: mmbeit.converters.convert(sd, src, kind="backbone") or '
            'tools/model_converters/convert_checkpoint.py (knn_eval.py: --src)')
    embed_dims, in_channels, ph, pw = (int(s) for s in proj.shape)
    if ph != pw:
        raise ArchInferenceError(f'patch_embed.proj.weight has a {ph}x{pw} kernel; BEiTViT '
                                 'takes square patches only')
    patch_size = ph

    indices = sorted({int(m.group(1)) for k in sd for m in [_BLOCK.match(k)] if m})
    if not indices:
        raise ArchInferenceError('the state dict has no blocks.i.* keys: not a BEiTViT '
                                 'backbone (or its blocks are under another prefix)')
    num_layers = indices[-1] + 1
    if indices != list(range(num_layers)):
        missing = sorted(set(range(num_layers)) - set(indices))
        raise ArchInferenceError(f'blocks {missing} are missing from the state dict (it has '
                                 f'blocks up to {num_layers - 1}): a truncated checkpoint?')

    fc1 = [sd.get(f'blocks.{i}.mlp.fc1.weight') for i in range(num_layers)]
    if any(w is None for w in fc1):
        raise ArchInferenceError(f'block {[w is None for w in fc1].index(True)} has no '
                                 'mlp.fc1.weight: not a BEiTViT block layout')
    widths = sorted({int(w.shape[0]) for w in fc1})
    if len(widths) > 1:
        raise ArchInferenceError(f'the blocks have MLP widths {widths}; BEiTViT uses one '
                                 'feedforward_channels for all blocks')

    layer_tables = [sd.get(LAYER_TABLE.format(i)) for i in range(num_layers)]
    shared = sd.get(SHARED_TABLE)
    if any(t is not None for t in layer_tables):
        if any(t is None for t in layer_tables):
            absent = [i for i, t in enumerate(layer_tables) if t is None]
            raise ArchInferenceError(f'per-layer relative position tables are missing for '
                                     f'blocks {absent}: every block needs its own')
        rel_pos_bias, tables = 'per_layer', layer_tables
    elif shared is not None:
        rel_pos_bias, tables = 'shared', [shared]
    else:
        rel_pos_bias, tables = None, []
    shapes = sorted({tuple(t.shape) for t in tables})
    if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
        raise ArchInferenceError(f'the relative position tables have shapes {shapes}; '
                                 'they must all be [T, num_heads]')

    if tables:
        heads = shapes[0][1]
        if num_heads is not None and num_heads != heads:
            raise ArchInferenceError(f'num_heads={num_heads} was given but the relative '
                                     f'position tables have {heads} heads (second dim)')
        num_heads = heads
    elif num_heads is None:
        raise ArchInferenceError(
            'cannot infer num_heads: the state dict has no relative position table (its '
            'second dim is the head count) and the qkv weights do not tell it. Pass '
            f'num_heads= (knn_eval.py: --num-heads N; N divides embed_dims={embed_dims})')
    if embed_dims % num_heads:
        raise ArchInferenceError(f'num_heads={num_heads} does not divide '
                                 f'embed_dims={embed_dims}')

    grid = None
    if tables:
        try:
            grid = grid_from_table_len(shapes[0][0])
        except ValueError as exc:
            raise ArchInferenceError(f'relative position tables of length {shapes[0][0]}: '
                                     f'{exc}') from None
    pos = sd.get('pos_embed')
    if pos is not None:
        if pos.ndim != 3 or pos.shape[-1] != embed_dims:
            raise ArchInferenceError(f'pos_embed has shape {list(pos.shape)}; expected '
                                     f'[1, N+1, {embed_dims}]')
        num = int(pos.shape[1]) - 1
        if grid is None or grid[0] * grid[1] != num:
            side = _square_grid(num)
            if grid is None and side is None and img_size is None:
                raise ArchInferenceError(
                    f'cannot infer img_size: pos_embed has {num} patch positions, not a '
                    'square grid, and there is no relative position table. Pass img_size= '
                    '(knn_eval.py: --img-size N)')
            if grid is None and side is not None:
                grid = (side, side)
    if img_size is None:
        if grid is None:
            raise ArchInferenceError(
                'cannot infer img_size: the state dict has neither a relative position table '
                'nor a pos_embed (the model works at any size). Pass img_size= '
                '(knn_eval.py: --img-size N)')
        img_size = (grid[0] * patch_size, grid[1] * patch_size)
        if img_size[0] == img_size[1]:
            img_size = img_size[0]
    else:
        to_2tuple(img_size)  # an int or a pair

    has_fc_norm = 'fc_norm.weight' in sd
    final_norm = 'norm.weight' in sd
    out_type = 'avg_featmap' if has_fc_norm else 'cls_token' if final_norm else 'raw'
    return dict(
        arch=dict(embed_dims=embed_dims, num_layers=num_layers, num_heads=int(num_heads),
                  feedforward_channels=widths[0]),
        img_size=img_size, patch_size=patch_size, in_channels=in_channels,
        use_abs_pos_emb=pos is not None, rel_pos_bias=rel_pos_bias,
        qv_bias='blocks.0.attn.q_bias' in sd,
        layer_scale_init_value=0.1 if 'blocks.0.gamma_1' in sd else 0.,
        final_norm=final_norm, use_mask_token='mask_token' in sd, out_type=out_type)
