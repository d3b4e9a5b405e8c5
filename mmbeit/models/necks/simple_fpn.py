"""ViTDet's simple feature pyramid: strides 4 to 64 from one stride-16 ViT map.

Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object Detection"
(ViTDet), §3 and Figure 2 (c); detectron2 ``modeling/backbone/vit.py``
``SimpleFeaturePyramid``. From the last block's map [B, D, H/16, W/16]:

- stride 4:  ConvT(D, D/2, 2, 2) - LN - GELU - ConvT(D/2, D/4, 2, 2)
- stride 8:  ConvT(D, D/2, 2, 2)
- stride 16: the map itself
- stride 32: max-pool 2 x 2, stride 2

(scale 0.25, max-pool 4 x 4 with stride 4, is mmbeit's addition for patch-8 backbones, whose
map is at stride 8: scale factors 2, 1, 0.5, 0.25 then give the same strides 4 to 32)

then per level a 1 x 1 conv to ``out_channels`` and a 3 x 3 conv, each followed by a
LayerNorm over channels and no activation (convs without bias, as the norm follows);
stride 64 (``num_outs=5``) is a stride-2 subsampling of the stride-32 output (detectron2's
``LastLevelMaxPool``: max-pool, kernel 1). Unlike an FPN there is no top-down path.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from mmbeit.registry import MODELS

from ..utils import check_int


@MODELS.register_module(name='LN2d')
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (each pixel normalised on its own).

    ViTDet's norm in the simple feature pyramid and the RoI heads (detectron2's
    ``LayerNorm`` in ``layers/batch_norm.py``, eps 1e-6). Registered as ``LN2d``; in
    mmdet's or mmcv's ``norm_cfg`` write ``dict(type='mmbeit.LN2d')``.
    """
    _abbr_ = 'ln'

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs):
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f'LN2d expects an NCHW map, got a tensor of shape '
                             f'{tuple(x.shape)}')
        # .contiguous(): the permuted result has channels-last strides, and mmcv's RoIAlign
        # (CPU) reads its input as contiguous NCHW whatever the strides, so RoI features
        # of such a map are scrambled (tests/test_models/test_simple_fpn.py)
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                            self.bias, self.eps).permute(0, 3, 1, 2).contiguous()


def _conv_norm(in_ch: int, out_ch: int, kernel: int, norm_cfg: dict) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        build_norm_layer(norm_cfg, out_ch)[1])


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid (module docstring).

    Args:
        in_channels (int): channels D of the backbone map (768 for ViT-B).
        out_channels (int): channels of every output level (256 in ViTDet).
        scale_factors (Sequence[float]): levels built from the backbone map, from
            {4, 2, 1, 0.5, 0.25}, largest first; ViTDet uses (4, 2, 1, 0.5) on its stride-16
            map (strides 4, 8, 16, 32); a patch-8 backbone takes (2, 1, 0.5, 0.25).
        num_outs (int): outputs; one more than the levels adds the stride-2 subsampling
            of the last one (ViTDet: 5, strides 4 to 64, for the RPN's five anchor sizes).
        norm_cfg (dict): the norm after each conv and in the stride-4 branch (default
            :class:`LayerNorm2d`).
        in_index (int): which of the backbone's outputs to use (default the last).
    Returns, from ``forward(feats)``: a tuple of ``num_outs`` maps [B, out_channels, h, w].
    """

    def __init__(self, in_channels: int, out_channels: int = 256,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5), num_outs: int = 5,
                 norm_cfg: Optional[dict] = None, in_index: int = -1,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        check_int(in_channels, 'in_channels', 'SimpleFeaturePyramid', low=1)
        check_int(out_channels, 'out_channels', 'SimpleFeaturePyramid', low=1)
        scale_factors = [float(s) for s in scale_factors]
        if not scale_factors or any(s not in (4., 2., 1., .5, .25) for s in scale_factors) \
                or scale_factors != sorted(set(scale_factors), reverse=True):
            raise ValueError(f'scale_factors must be distinct values from (4, 2, 1, 0.5, '
                             f'0.25), largest first, got {scale_factors}')
        num_outs = check_int(num_outs, 'num_outs', 'SimpleFeaturePyramid')
        if isinstance(in_index, bool) or not isinstance(in_index, int):
            raise ValueError(f'SimpleFeaturePyramid: in_index must be an int (an index into '
                             f'the backbone\'s outputs, -1 for the last), got {in_index!r}')
        if num_outs not in (len(scale_factors), len(scale_factors) + 1):
            raise ValueError(f'num_outs must be {len(scale_factors)} (one per scale factor) '
                             f'or {len(scale_factors) + 1} (plus a stride-2 subsampling of '
                             f'the last level), got {num_outs}')
        if in_channels % 4 and 4.0 in scale_factors or in_channels % 2 and 2.0 in scale_factors:
            raise ValueError(f'in_channels {in_channels} must be divisible by 4 for scale 4 '
                             f'and by 2 for scale 2')
        norm_cfg = dict(type=LayerNorm2d) if norm_cfg is None else norm_cfg
        self.scale_factors = scale_factors
        self.num_outs = num_outs
        self.in_index = in_index
        d = in_channels
        self.stages = nn.ModuleList()
        for scale in scale_factors:
            if scale == 4.0:
                resample = nn.Sequential(
                    nn.ConvTranspose2d(d, d // 2, 2, stride=2),
                    build_norm_layer(norm_cfg, d // 2)[1], nn.GELU(),
                    nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2))
                ch = d // 4
            elif scale == 2.0:
                resample, ch = nn.ConvTranspose2d(d, d // 2, 2, stride=2), d // 2
            elif scale == 1.0:
                resample, ch = nn.Identity(), d
            else:
                k = int(1 / scale)
                resample, ch = nn.MaxPool2d(k, stride=k), d
            self.stages.append(nn.Sequential(
                resample, _conv_norm(ch, out_channels, 1, norm_cfg),
                _conv_norm(out_channels, out_channels, 3, norm_cfg)))

    def init_weights(self) -> None:
        """The 1 x 1 and 3 x 3 convs get He-normal (fan-out) weights, as detectron2's
        ``c2_msra_fill``; transposed convs and norms keep PyTorch's defaults."""
        super().init_weights()
        if self.init_cfg is not None:
            return
        for m in self.modules():
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, feats) -> Tuple[torch.Tensor, ...]:
        if isinstance(feats, (list, tuple)):
            if not -len(feats) <= self.in_index < len(feats):
                raise IndexError(f'SimpleFeaturePyramid: in_index {self.in_index} is out of '
                                 f'range for the backbone\'s {len(feats)} outputs; set the '
                                 f'neck\'s in_index or the backbone\'s out_indices')
            x = feats[self.in_index]
        else:
            x = feats
        outs = [stage(x) for stage in self.stages]
        if self.num_outs > len(outs):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
