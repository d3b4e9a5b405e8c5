"""Heads of mmbeit."""
from .mim_head import MIMHead

__all__ = ['MIMHead']
