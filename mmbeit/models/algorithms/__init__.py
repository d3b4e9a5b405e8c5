"""Pretraining algorithms of mmbeit."""
from .beit import BEiT

__all__ = ['BEiT']
