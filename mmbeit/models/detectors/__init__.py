"""Detectors of mmbeit (mmdet subclasses), registered without importing mmdet.

``mmbeit.models`` is imported by every mmbeit run, and importing mmdet's models costs
seconds that pretraining and classification should not pay. So the registry holds a
builder under the class's name that imports the class on first use; configs write
``type='mmbeit.MaskRCNN', _scope_='mmdet'`` as for any registered class.
"""
from mmbeit.registry import MODELS

__all__ = ['build_mask_rcnn']


@MODELS.register_module(name='MaskRCNN')
def build_mask_rcnn(**kwargs):
    """``mmbeit.MaskRCNN``: :class:`mmbeit.models.detectors.mask_rcnn.MaskRCNN`, mmdet's
    MaskRCNN (same arguments) whose heads stay in fp32 under mixed precision."""
    from .mask_rcnn import MaskRCNN
    return MaskRCNN(**kwargs)
