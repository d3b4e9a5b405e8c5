"""Backbones of mmbeit."""
from .beit_vit import (
    BEiTAttention,
    BEiTBlock,
    BEiTMlp,
    BEiTViT,
    DropPath,
    adapt_beit_state_dict_,
    beit_init_weights_,
)

__all__ = [
    'BEiTAttention', 'BEiTBlock', 'BEiTMlp', 'BEiTViT', 'DropPath', 'adapt_beit_state_dict_',
    'beit_init_weights_'
]
