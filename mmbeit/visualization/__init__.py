"""Visualisation helpers: segmentation overlays with a class legend, detection overlays
(masks, boxes, class and score tags), and the panels of the masked-image-modeling picture
(tools/analysis_tools/visualize_mim.py)."""
from .det_overlay import detection_label, overlay_detections, save_det_overlay
from .mim_panels import (
    attention_indices,
    build_pretraining_steps,
    centre_views,
    draw_mim_panels,
    find_pretraining_steps,
    mim_panels,
    panel_names,
    save_mim_panels,
    seeded_mask,
    token_palette,
)
from .seg_overlay import overlay_segmentation, save_seg_overlay, seg_palette

__all__ = ['seg_palette', 'overlay_segmentation', 'save_seg_overlay', 'mim_panels',
           'draw_mim_panels', 'save_mim_panels', 'centre_views', 'seeded_mask',
           'find_pretraining_steps', 'build_pretraining_steps', 'attention_indices',
           'panel_names', 'token_palette', 'overlay_detections', 'save_det_overlay',
           'detection_label']
