"""Model building blocks shared by mmbeit's backbones, necks and heads."""
from .arg_checks import check_int, check_number, check_rgb
from .init import trunc_normal_
from .rel_pos import (
    RelativePositionBias,
    build_relative_position_index,
    cubic_spline_matrix,
    gather_rel_pos_bias,
    geometric_axis,
    geometric_ratio,
    grid_from_table_len,
    rel_pos_table_len,
    resize_pos_embed,
    resize_rel_pos_table,
    to_2tuple,
)
from .unsaved import keep_out_of_checkpoints

__all__ = [
    'RelativePositionBias', 'build_relative_position_index', 'check_int', 'check_number',
    'check_rgb',
    'cubic_spline_matrix',
    'gather_rel_pos_bias', 'geometric_axis', 'geometric_ratio', 'grid_from_table_len',
    'keep_out_of_checkpoints',
    'rel_pos_table_len', 'resize_pos_embed', 'resize_rel_pos_table', 'to_2tuple',
    'trunc_normal_'
]
