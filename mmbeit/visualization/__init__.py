"""Visualisation helpers: segmentation overlays with a class legend."""
from .seg_overlay import overlay_segmentation, save_seg_overlay, seg_palette

__all__ = ['seg_palette', 'overlay_segmentation', 'save_seg_overlay']
