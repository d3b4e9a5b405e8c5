"""The two views of BEiT / BEiT v2 pretraining, cut from one crop (beit-spec.md 4.2).

Order, as in the reference (unilm ``DataAugmentationForBEiT``): ColorJitter(0.4, 0.4,
0.4, hue 0) with probability 1, horizontal flip with probability 0.5, then ONE
RandomResizedCrop box (scale range, aspect ratio (3/4, 4/3)) resized twice from the
original pixels:

==============  ======================  ==========================================
view            v1 (BEiT)               v2 (BEiT v2)
==============  ======================  ==========================================
backbone        224, bicubic            224, bicubic
tokenizer       112, Lanczos            224, bicubic
crop scale      (0.08, 1)               (0.2, 1)
==============  ======================  ==========================================

All the work happens on Pillow images with torchvision's own operations (so Lanczos is
available and the results equal the reference's PIL pipeline), and all randomness comes
from **torch's global RNG**, drawn in torchvision's order: ColorJitter's
``randperm`` and factors, one ``torch.rand(1)`` for the flip (always drawn, even with
``flip_prob`` 0 or 1), then ``RandomResizedCrop.get_params`` (10 attempts, central-crop
fallback). With the same torch seed the views equal those of the equivalent
torchvision ``Compose``. mmengine's ``randomness=dict(seed=...)`` seeds torch, and
PyTorch's DataLoader gives each worker its own seed derived from it, so runs repeat.
Neither numpy's nor Python's RNG is used.
"""
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from PIL import Image
from torchvision import transforms as T

from mmbeit.registry import TRANSFORMS

__all__ = ['BEiTMaskedViews', 'PIL_INTERPOLATIONS']

PIL_INTERPOLATIONS = {
    'nearest': Image.Resampling.NEAREST,
    'bilinear': Image.Resampling.BILINEAR,
    'bicubic': Image.Resampling.BICUBIC,
    'lanczos': Image.Resampling.LANCZOS,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
}


def _size_hw(size, name: str) -> Tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and s > 0 for s in size)):
        raise ValueError(f'BEiTMaskedViews: {name} must be a positive int or an (h, w) '
                         f'pair of them, got {size!r}')
    return int(size[0]), int(size[1])


def _resample(name: str, arg: str):
    if name not in PIL_INTERPOLATIONS:
        raise ValueError(f'BEiTMaskedViews: {arg} {name!r} is not one of '
                         f'{sorted(PIL_INTERPOLATIONS)}')
    return PIL_INTERPOLATIONS[name]


def _range(value, name: str, upper: Optional[float]) -> Tuple[float, float]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, numbers.Real) for v in value)):
        raise ValueError(f'BEiTMaskedViews: {name} must be a (min, max) pair, got {value!r}')
    lo, hi = float(value[0]), float(value[1])
    if not (0 < lo <= hi and (upper is None or hi <= upper)):
        bound = f' <= {upper}' if upper is not None else ''
        raise ValueError(f'BEiTMaskedViews: {name} must satisfy 0 < min <= max{bound}, '
                         f'got {value!r}')
    return lo, hi


@TRANSFORMS.register_module()
class BEiTMaskedViews(BaseTransform):
    """Backbone view and tokenizer view of one random crop (spec 4.2).

    Needs ``results['img']``: an HxWx3 uint8 **RGB** array (:class:`LoadImageRGB`).
    Sets ``img`` (the backbone view, uint8 ``img_size``), ``target_img`` (the tokenizer
    view, uint8 ``target_size``, RGB), ``img_shape`` (the backbone view's (H, W)),
    ``crop_bbox`` ((x1, y1, x2, y2) of the crop in the jittered, possibly flipped,
    original image), ``flip`` (bool) and ``flip_direction`` ('horizontal' or None).

    Args:
        img_size (int | tuple): backbone view size, int or (h, w). Default 224.
        target_size (int | tuple): tokenizer view size: 112 for BEiT v1 (DALL-E),
            224 for BEiT v2 (VQ-KD). Default 112.
        interpolation (str): resize filter of the backbone view, one of
            'nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming'.
        target_interpolation (str): resize filter of the tokenizer view: 'lanczos'
            for v1, 'bicubic' for v2.
        scale (tuple): range of the crop's area fraction. (0.08, 1) for v1,
            (0.2, 1) for v2.
        ratio (tuple): range of the crop's aspect ratio (w / h).
        color_jitter (tuple | None): (brightness, contrast, saturation[, hue]),
            torchvision ``ColorJitter`` factors applied with probability 1; hue
            defaults to 0. None disables the jitter.
        flip_prob (float): probability of a horizontal flip.

    Example (BEiT v2)::

        dict(type='BEiTMaskedViews', target_size=224, target_interpolation='bicubic',
             scale=(0.2, 1.0))
    """

    def __init__(self,
                 img_size: Union[int, Sequence[int]] = 224,
                 target_size: Union[int, Sequence[int]] = 112,
                 interpolation: str = 'bicubic',
                 target_interpolation: str = 'lanczos',
                 scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3. / 4., 4. / 3.),
                 color_jitter: Optional[Sequence[float]] = (0.4, 0.4, 0.4, 0.0),
                 flip_prob: float = 0.5):
        self.img_size = _size_hw(img_size, 'img_size')
        self.target_size = _size_hw(target_size, 'target_size')
        self.interpolation = interpolation
        self.target_interpolation = target_interpolation
        self._resample = _resample(interpolation, 'interpolation')
        self._target_resample = _resample(target_interpolation, 'target_interpolation')
        self.scale = _range(scale, 'scale', upper=1.0)
        self.ratio = _range(ratio, 'ratio', upper=None)
        if color_jitter is None:
            self.color_jitter = None
            self._jitter = None
        else:
            if (not isinstance(color_jitter, (tuple, list)) or len(color_jitter) not in (3, 4)
                    or not all(isinstance(v, numbers.Real) and v >= 0
                               for v in color_jitter)):
                raise ValueError('BEiTMaskedViews: color_jitter must be None or '
                                 '(brightness, contrast, saturation[, hue]) with values >= 0, '
                                 f'got {color_jitter!r}')
            self.color_jitter = tuple(float(v) for v in color_jitter) + (0.0,) * (
                4 - len(color_jitter))
            b, c, s, h = self.color_jitter
            self._jitter = T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)
        if not (isinstance(flip_prob, numbers.Real) and 0 <= flip_prob <= 1):
            raise ValueError(f'BEiTMaskedViews: flip_prob must be in [0, 1], got {flip_prob!r}')
        self.flip_prob = float(flip_prob)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
                and img.shape[2] == 3):
            got = (f'{img.dtype} array of shape {img.shape}' if isinstance(img, np.ndarray)
                   else type(img).__name__)
            raise TypeError(f'BEiTMaskedViews needs results["img"] as an HxWx3 uint8 RGB '
                            f'array (use LoadImageRGB), got {got}')
        pil = Image.fromarray(np.ascontiguousarray(img))
        if self._jitter is not None:
            pil = self._jitter(pil)
        flip = bool(torch.rand(1).item() < self.flip_prob)
        if flip:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        top, left, h, w = T.RandomResizedCrop.get_params(pil, list(self.scale),
                                                         list(self.ratio))
        box = (left, top, left + w, top + h)
        crop = pil.crop(box)
        # Both views are resized from the same crop of the original pixels.
        view = crop.resize(self.img_size[::-1], self._resample)
        target = crop.resize(self.target_size[::-1], self._target_resample)
        results['img'] = np.array(view, dtype=np.uint8)
        results['target_img'] = np.array(target, dtype=np.uint8)
        results['img_shape'] = self.img_size
        results['crop_bbox'] = box
        results['flip'] = flip
        results['flip_direction'] = 'horizontal' if flip else None
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(img_size={self.img_size}, '
                f'target_size={self.target_size}, interpolation={self.interpolation!r}, '
                f'target_interpolation={self.target_interpolation!r}, scale={self.scale}, '
                f'ratio={self.ratio}, color_jitter={self.color_jitter}, '
                f'flip_prob={self.flip_prob})')
