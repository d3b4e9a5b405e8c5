"""Necks of mmbeit."""
from .beitv2_neck import BEiTV2Neck
from .simple_fpn import LayerNorm2d, SimpleFeaturePyramid

__all__ = ['BEiTV2Neck', 'LayerNorm2d', 'SimpleFeaturePyramid']
