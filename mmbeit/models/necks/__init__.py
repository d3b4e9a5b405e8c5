"""Necks of mmbeit."""
from .beitv2_neck import BEiTV2Neck

__all__ = ['BEiTV2Neck']
