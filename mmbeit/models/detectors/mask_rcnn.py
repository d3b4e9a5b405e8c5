"""Mask R-CNN whose backbone and neck run in mixed precision and whose heads run in fp32.

Why: mmcv 2.1's RoIAlign has CPU and CUDA kernels for float, double and half only, and
its CPU NMS reads float boxes and scores, so under bf16 autocast (``tools/train.py --amp``,
whose default dtype is bf16) mmdet's Mask R-CNN stops at the RPN's proposal NMS (CPU:
``RuntimeError: expected scalar type Float but found BFloat16``) or at the first RoIAlign
(CUDA). detectron2's ViTDet does not meet this because torchvision's ops cast to fp32
under autocast themselves; mmcv's do not.

How: :class:`MixedPrecisionBackboneMixin` notes the autocast state it is called under
(``loss``, ``predict``, ``_forward``), turns autocast off for the whole detector and back
on, with the same dtype, inside ``extract_feat`` only, whose outputs it casts to fp32. So
the ViT and the simple feature pyramid, about 70 % of ViT-B's multiply-adds at 1024 px
(docs/detection.md, "Mixed precision"), run in bf16 (or fp16), and the RPN, the RoI
heads, their NMS, RoIAlign and losses in fp32. Without
autocast nothing changes: the outputs equal mmdet's detector exactly
(``tests/test_models/test_mask_rcnn_amp.py``).
"""
from contextlib import contextmanager
from typing import Optional, Tuple

import torch
from mmdet.models.detectors import MaskRCNN as _MMDetMaskRCNN


class MixedPrecisionBackboneMixin:
    """For an mmdet detector: the ambient autocast applies to ``extract_feat`` only.

    Put it before the mmdet class (``class X(MixedPrecisionBackboneMixin, CascadeRCNN)``).
    """
    _feat_autocast: Optional[Tuple[str, torch.dtype]] = None

    @contextmanager
    def _heads_in_fp32(self, batch_inputs: torch.Tensor):
        device = batch_inputs.device.type
        if not torch.is_autocast_enabled(device):
            yield
            return
        outer = self._feat_autocast
        self._feat_autocast = (device, torch.get_autocast_dtype(device))
        try:
            with torch.autocast(device, enabled=False):
                yield
        finally:
            self._feat_autocast = outer

    def extract_feat(self, batch_inputs: torch.Tensor):
        if self._feat_autocast is None:
            return super().extract_feat(batch_inputs)
        device, dtype = self._feat_autocast
        with torch.autocast(device, dtype=dtype):
            feats = super().extract_feat(batch_inputs)
        return tuple(f.float() for f in feats)

    def loss(self, batch_inputs, batch_data_samples):
        with self._heads_in_fp32(batch_inputs):
            return super().loss(batch_inputs, batch_data_samples)

    def predict(self, batch_inputs, batch_data_samples, rescale: bool = True):
        with self._heads_in_fp32(batch_inputs):
            return super().predict(batch_inputs, batch_data_samples, rescale=rescale)

    def _forward(self, batch_inputs, batch_data_samples=None):
        with self._heads_in_fp32(batch_inputs):
            return super()._forward(batch_inputs, batch_data_samples)


class MaskRCNN(MixedPrecisionBackboneMixin, _MMDetMaskRCNN):
    """mmdet's ``MaskRCNN`` with :class:`MixedPrecisionBackboneMixin` (module docstring):
    trains under ``--amp bf16``; without autocast it is mmdet's model, same arguments,
    same state dict keys. In a config: ``type='mmbeit.MaskRCNN', _scope_='mmdet'`` (the
    registry holds a builder that imports this module, ``mmbeit.models.detectors``)."""
