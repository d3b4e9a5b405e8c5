"""Detectors of mmbeit (mmdet subclasses), registered without importing mmdet.

``mmbeit.models`` is imported by every mmbeit run, and importing mmdet's models costs
seconds that pretraining and classification should not pay. So the registry holds a
builder under the class's name that imports the class on first use; configs write
``type='mmbeit.MaskRCNN', _scope_='mmdet'`` as for any registered class. The builder
spells out the class's arguments, so the config key check
(``mmbeit.engine.config_checks``) still names a misspelt key.
"""
from mmbeit.registry import MODELS

__all__ = ['build_mask_rcnn']


@MODELS.register_module(name='MaskRCNN')
def build_mask_rcnn(backbone, rpn_head, roi_head, train_cfg, test_cfg, neck=None,
                    data_preprocessor=None, init_cfg=None):
    """``mmbeit.MaskRCNN``: :class:`mmbeit.models.detectors.mask_rcnn.MaskRCNN`, mmdet's
    MaskRCNN (the same arguments) whose heads stay in fp32 under mixed precision."""
    from .mask_rcnn import MaskRCNN
    return MaskRCNN(backbone=backbone, rpn_head=rpn_head, roi_head=roi_head,
                    train_cfg=train_cfg, test_cfg=test_cfg, neck=neck,
                    data_preprocessor=data_preprocessor, init_cfg=init_cfg)
