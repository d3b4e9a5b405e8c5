"""Backbones of mmbeit."""
from .arch_from_state_dict import ArchInferenceError, arch_from_state_dict
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
    'beit_init_weights_', 'arch_from_state_dict', 'ArchInferenceError'
]
