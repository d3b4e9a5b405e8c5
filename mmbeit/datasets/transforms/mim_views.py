"""The two views of BEiT / BEiT v2 pretraining, cut from one crop.

Reference: unilm's ``DataAugmentationForBEiT`` (``beit/datasets.py``, ``beit2/datasets.py``)
with ``RandomResizedCropAndInterpolationWithTwoPic`` (``beit/transforms.py``):
ColorJitter(0.4, 0.4, 0.4, hue 0) with probability 1, horizontal flip with probability
0.5, then ONE RandomResizedCrop box (scale range, aspect ratio (3/4, 4/3)) resized twice
from the original pixels:

==============  ======================  ==========================================
view            v1 (BEiT)               v2 (BEiT v2)
==============  ======================  ==========================================
backbone        224, bicubic            224, bicubic
tokenizer       112, Lanczos            224, bicubic
crop scale      (0.08, 1)               (0.2, 1)
==============  ======================  ==========================================

**Randomness** comes from torch's global RNG only, drawn in torchvision's order before
any pixel is touched: ColorJitter's ``randperm`` and factors, one ``torch.rand(1)`` for
the flip (always drawn, even with ``flip_prob`` 0 or 1), then
``RandomResizedCrop.get_params`` (10 attempts, central-crop fallback), which needs only
the image size. The same torch seed gives the same views (and the same draws as the
torchvision ``Compose`` of the reference).

**How the pixels are computed.** The reference jitters and flips the whole image, then
crops. Brightness, saturation and hue act on each pixel alone and commute with cropping
and flipping, so here the crop region is cut first (from a decode scaled down when the
crop allows, see below) and only its pixels are jittered. The one whole-image quantity
is contrast's grey level: torchvision blends with the rounded mean grey (Pillow's ``L``)
of the whole image as it is at that point of the jitter; it is computed from the whole
decoded image with the jitter operations drawn before contrast applied to it. Two modes:

* ``exact=True``: the mean grey from every pixel, the image decoded at full size, both
  views resized by Pillow. The views equal the reference's bit for bit.
* ``exact=False`` (default), four approximations, each bounded:

  1. the mean grey from a regular subsample of the decoded image (about every s-th
     pixel of every s-th row, s chosen to keep at most 32k pixels), as the grey of
     their mean colour (Pillow averages the rounded grey of each pixel). When its
     rounded value differs from the full image's (by 1, rarely 2), the contrast
     output moves by at most 1 grey level (the factor is in [0.6, 1.4], so the grey
     term weighs at most 0.4);
  2. brightness, contrast and saturation as one OpenCV pass each (``addWeighted``,
     ``transform``), which computes Pillow's blend in one float expression and can
     differ from it by 1 grey level given the same input;
  3. bicubic and bilinear resizes by torch's antialiased uint8 kernels
     (``interpolate(..., antialias=True)``), which follow Pillow's filters and differ
     from Pillow's output by at most 1 grey level (on about 0.5% of the pixels); Lanczos,
     box, Hamming and nearest stay Pillow's.
  4. with ``LoadImageRGB(lazy=True)``, a JPEG whose crop box, divided by 2, 4 or 8, is
     still at least as large as the larger view in both directions is decoded at that
     fraction of its size (libjpeg's DCT scaling, ``Image.draft``), the largest such
     fraction; the crop box is widened to whole pixels of the reduced image, which
     moves each border of the views by at most one output pixel (and scales them by
     at most 1%). With part of the downscaling done by libjpeg's filter, the views
     differ from the reference's by 2.2 grey levels on average (at most ~110 at a few
     edge pixels), less than moving the crop box by one pixel of the original image
     does (3.1; measured on the benchmark's photos, v2 views). Images whose crop is
     smaller than twice the views, such as most ImageNet photos (500 x 375) for
     224 px views, are always decoded whole.

  Without a scaled-down decode, the views differ from the exact mode's by 0.09 grey
  levels on average, on 9% of the pixels, by at most 4 (measured on the same photos;
  the tests check at most 8): below the noise of JPEG coding itself, and far below
  the jitter's own range (each factor moves pixels by up to 40%). The draws, the crop
  box and the flip are the same, so the augmentation's distribution is unchanged.

With two equal views (BEiT v2: both 224, bicubic) the resize is done once.

mmengine's ``randomness=dict(seed=...)`` seeds torch, and PyTorch's DataLoader gives each
worker its own seed derived from it, so runs repeat. Neither numpy's nor Python's RNG is
used here.
"""
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf
from mmcv.transforms import BaseTransform
from PIL import Image, ImageStat
from torchvision import transforms as T
from torchvision.transforms import functional as F

from mmbeit.registry import TRANSFORMS

from .loading import EncodedImage

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



# Resize filters torch has as antialiased uint8 kernels (the fast mode's resizes).
_TORCH_MODES = {'bicubic': 'bicubic', 'bilinear': 'bilinear'}
# Pixels of the subsample that gives contrast's mean grey in the fast mode.
_GREY_SAMPLE_PIXELS = 32768
# Pillow's grey level (ITU-R 601-2 luma in 16-bit fixed point, as in its RGB -> L).
_LUMA = np.array([19595, 38470, 7471], np.float64) / 65536
# Added before OpenCV's round-to-nearest so that it truncates as Pillow's blend does
# (a value within 1e-3 below an integer is the one case that rounds up).
_TRUNCATE = -0.5 + 1e-3


def _mean_grey(img: Image.Image) -> int:
    """The grey level torchvision's (Pillow's) contrast blends with: the mean of the
    ``L`` image, rounded half up."""
    return int(ImageStat.Stat(img.convert('L')).mean[0] + 0.5)


def _subsample(img: Image.Image, max_pixels: int) -> Image.Image:
    """The image itself when it has at most ``max_pixels`` pixels, else about every s-th
    pixel of every s-th row, s the smallest stride that keeps at most that many: a
    nearest-neighbour resize, which picks stored pixels and makes no new values."""
    w, h = img.size
    stride = math.ceil(math.sqrt(w * h / max_pixels))
    if stride <= 1:
        return img
    return img.resize((math.ceil(w / stride), math.ceil(h / stride)),
                      Image.Resampling.NEAREST)


def _blend_affine(array: np.ndarray, factor: float, grey=None) -> np.ndarray:
    """Pillow's ``blend(degenerate, image, factor)`` of an HxWx3 uint8 array in one
    OpenCV pass: ``factor * v + (1 - factor) * d`` per channel, clipped to [0, 255] and
    truncated. ``d`` is the constant ``grey`` (brightness: 0, contrast: the mean grey) or,
    when ``grey`` is None, the pixel's own grey level (saturation). Pillow rounds the
    pixel's grey to an integer first and computes in float32; this computes in one
    float expression, so a result can differ from Pillow's by 1."""
    if grey is None:
        matrix = factor * np.eye(3) + (1.0 - factor) * _LUMA[None, :]
        return cv2.transform(array, np.hstack([matrix, np.full((3, 1), _TRUNCATE)]))
    return cv2.addWeighted(array, factor, array, 0.0, (1.0 - factor) * grey + _TRUNCATE)


def _resize_torch(region: np.ndarray, size: Tuple[int, int], mode: str) -> np.ndarray:
    """Antialiased uint8 resize of an HxWx3 array to ``size`` (h, w) with torch."""
    x = torch.from_numpy(region).permute(2, 0, 1).unsqueeze(0)   # [1, 3, H, W], NHWC memory
    y = nnf.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return np.ascontiguousarray(y[0].permute(1, 2, 0).numpy())  # [h, w, 3]


@TRANSFORMS.register_module()
class BEiTMaskedViews(BaseTransform):
    """Backbone view and tokenizer view of one random crop.

    Needs ``results['img']``, an HxWx3 uint8 **RGB** array (:class:`LoadImageRGB`), or
    ``results['img_encoded']`` (``LoadImageRGB(lazy=True)``), which it decodes once, after
    drawing the crop, scaled down when the crop allows (module docstring). Sets ``img``
    (the backbone view, uint8 ``img_size``), ``target_img`` (the tokenizer view, uint8
    ``target_size``, RGB), ``img_shape`` (the backbone view's (H, W)), ``crop_bbox``
    ((x1, y1, x2, y2) of the crop in the jittered, possibly flipped, original image),
    ``flip`` (bool), ``flip_direction`` ('horizontal' or None) and ``decode_scale`` (1,
    or 2 / 4 / 8 when a JPEG was decoded at that fraction of its size); removes
    ``img_encoded``.

    Args:
        img_size (int | tuple): backbone view size, int or (h, w). Defaults to 224.
        target_size (int | tuple): tokenizer view size: 112 for BEiT v1 (DALL-E),
            224 for BEiT v2 (VQ-KD). Defaults to 112.
        interpolation (str): resize filter of the backbone view, one of
            'nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming'.
            Defaults to 'bicubic'.
        target_interpolation (str): resize filter of the tokenizer view: 'lanczos'
            for v1, 'bicubic' for v2. Defaults to 'lanczos'.
        scale (tuple): range of the crop's area fraction. (0.08, 1) for v1,
            (0.2, 1) for v2. Defaults to (0.08, 1.0).
        ratio (tuple): range of the crop's aspect ratio (w / h).
            Defaults to (3 / 4, 4 / 3).
        color_jitter (tuple | None): (brightness, contrast, saturation[, hue]),
            torchvision ``ColorJitter`` factors applied with probability 1; hue
            defaults to 0. None disables the jitter. Defaults to (0.4, 0.4, 0.4, 0.0).
        flip_prob (float): probability of a horizontal flip. Defaults to 0.5.
        exact (bool): compute the views exactly as the reference does (full-size
            decode, whole-image contrast statistics, Pillow resizes) instead of the
            faster, bounded approximations listed in the module docstring.
            Defaults to False.

    Example (BEiT v2)::

        dict(type='LoadImageRGB', lazy=True),
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
                 flip_prob: float = 0.5,
                 exact: bool = False):
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
                    or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                               and 0 <= v < math.inf for v in color_jitter)):
                raise ValueError('BEiTMaskedViews: color_jitter must be None or '
                                 '(brightness, contrast, saturation[, hue]) with values >= 0, '
                                 f'got {color_jitter!r}')
            if len(color_jitter) == 4 and color_jitter[3] > 0.5:
                raise ValueError('BEiTMaskedViews: the hue of color_jitter shifts hues by up to '
                                 'that fraction of the colour wheel and must be <= 0.5, got '
                                 f'{color_jitter[3]!r}')
            self.color_jitter = tuple(float(v) for v in color_jitter) + (0.0,) * (
                4 - len(color_jitter))
            b, c, s, h = self.color_jitter
            self._jitter = T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)
        if not (isinstance(flip_prob, numbers.Real) and 0 <= flip_prob <= 1):
            raise ValueError(f'BEiTMaskedViews: flip_prob must be in [0, 1], got {flip_prob!r}')
        self.flip_prob = float(flip_prob)
        if not isinstance(exact, bool):
            raise ValueError(f'BEiTMaskedViews: exact must be True or False, got {exact!r}')
        self.exact = exact
        # The larger view's (h, w): a scaled-down decode must still cover it.
        self._max_view = (max(self.img_size[0], self.target_size[0]),
                          max(self.img_size[1], self.target_size[1]))
        self._same_views = (self.img_size == self.target_size
                            and interpolation == target_interpolation)

    # The steps of ``transform`` are methods so that the pipeline benchmark
    # (tools/analysis_tools/benchmark_pipeline.py) can time each of them.

    def transform(self, results: dict) -> dict:
        source = self.source(results)
        params = self.draw(*(source.shape[:2]))
        image, scale = self.decode(source, params)
        region, stats = self.cut(image, scale, params)
        region = self.jitter(region, stats, params)
        view, target = self.resize(region)
        return self.write(results, params, scale, view, target)

    def source(self, results: dict) -> Union[np.ndarray, EncodedImage]:
        """The input image: the ``img`` array, or else the deferred ``img_encoded``."""
        if 'img' in results:
            img = results['img']
            if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
                    and img.shape[2] == 3):
                got = (f'{img.dtype} array of shape {img.shape}'
                       if isinstance(img, np.ndarray) else type(img).__name__)
                raise TypeError(f'BEiTMaskedViews needs results["img"] as an HxWx3 uint8 RGB '
                                f'array (use LoadImageRGB), got {got}')
            return img
        encoded = results.get('img_encoded')
        if isinstance(encoded, EncodedImage):
            return encoded
        raise KeyError('BEiTMaskedViews needs results["img"] (LoadImageRGB) or '
                       'results["img_encoded"] (LoadImageRGB(lazy=True)); put LoadImageRGB '
                       'before it in the pipeline')

    def draw(self, height: int, width: int) -> dict:
        """Every random draw of one sample, in the reference's order (torch's RNG).

        Returns ``jitter`` (the ColorJitter order and factors, or None), ``flip`` and
        ``box`` (top, left, h, w of the crop in the flipped image)."""
        jitter = None
        if self._jitter is not None:
            j = self._jitter
            jitter = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        flip = bool(torch.rand(1).item() < self.flip_prob)
        # get_params reads only the size: a tensor of shape (0, H, W) holds no pixels.
        box = T.RandomResizedCrop.get_params(torch.empty((0, height, width)),
                                             list(self.scale), list(self.ratio))
        return dict(jitter=jitter, flip=flip, box=tuple(box), size=(height, width))

    def decode_scale(self, params: dict) -> int:
        """The largest of 8, 4, 2 that leaves the crop box at least as large as the
        larger view in both directions when it divides it, else 1 (always 1 when
        ``exact``)."""
        if self.exact:
            return 1
        _, _, h, w = params['box']
        for scale in (8, 4, 2):
            if h >= scale * self._max_view[0] and w >= scale * self._max_view[1]:
                return scale
        return 1

    def decode(self, source, params: dict) -> Tuple[Union[Image.Image, np.ndarray], int]:
        """The whole image, decoded (at 1/scale of its size) when it is deferred."""
        if isinstance(source, np.ndarray):
            return source, 1
        return source.decode(self.decode_scale(params))

    def cut(self, image, scale: int, params: dict):
        """The crop region of ``image`` (flipped when drawn so) and the image contrast
        takes its mean grey from (None when no contrast is drawn): Pillow images in the
        exact mode, HxWx3 uint8 arrays in the fast mode."""
        top, left, h, w = params['box']
        height, width = params['size']
        if params['flip']:                 # the box was drawn in the flipped image
            left = width - left - w
        x0, y0, x1, y1 = left, top, left + w, top + h
        if scale > 1:                      # widen to whole pixels of the reduced image
            x0, y0, x1, y1 = x0 // scale, y0 // scale, -(-x1 // scale), -(-y1 // scale)
        if isinstance(image, np.ndarray):
            region = image[y0:y1, x0:x1]
            if self.exact:
                region = Image.fromarray(np.ascontiguousarray(region))
        else:
            region = image.crop((x0, y0, x1, y1))
            if not self.exact:
                region = np.array(region, dtype=np.uint8)
        if params['flip']:
            region = (region.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.exact
                      else cv2.flip(region, 1))
        stats = None
        jitter = params['jitter']
        if jitter is not None and jitter[2] is not None:
            stats = image if isinstance(image, Image.Image) else Image.fromarray(image)
            if not self.exact:
                stats = np.array(_subsample(stats, _GREY_SAMPLE_PIXELS), dtype=np.uint8)
        return region, stats

    def jitter(self, region, stats, params: dict):
        """ColorJitter's operations in the drawn order on the crop region; contrast
        blends with the mean grey of ``stats``, to which the operations drawn before
        contrast are applied first. Pillow's operations in the exact mode, one OpenCV
        pass each in the fast mode (hue, off by default, always Pillow's)."""
        if params['jitter'] is None:
            return region
        order, brightness, contrast, saturation, hue = params['jitter']
        fast = isinstance(region, np.ndarray)
        for fn_id in order.tolist():
            factor = (brightness, contrast, saturation, hue)[fn_id]
            if factor is None:
                continue
            if fn_id == 1:
                grey = (_mean_grey(stats) if not fast else
                        int(float(np.dot(cv2.mean(stats)[:3], _LUMA)) + 0.5))
                region = (_blend_affine(region, factor, grey) if fast else Image.blend(
                    Image.new('RGB', region.size, (grey,) * 3), region, factor))
                stats = None              # the later operations do not change the grey
                continue
            if fast and fn_id == 0:
                op = lambda x, f: _blend_affine(x, f, 0)   # noqa: E731
            elif fast and fn_id == 2:
                op = _blend_affine
            elif fast:                    # hue: HSV shift in Pillow
                op = lambda x, f: np.array(F.adjust_hue(Image.fromarray(x), f))  # noqa: E731
            else:
                op = (F.adjust_brightness, None, F.adjust_saturation, F.adjust_hue)[fn_id]
            region = op(region, factor)
            if stats is not None:
                stats = op(stats, factor)
        return region

    def resize(self, region) -> Tuple[np.ndarray, np.ndarray]:
        """Both views from the (jittered, flipped) crop region, as HxWx3 uint8 arrays:
        Pillow's resizes in the exact mode, torch's antialiased bicubic / bilinear in
        the fast mode (Pillow's for the other filters)."""
        views = []
        for size, name, resample in ((self.img_size, self.interpolation, self._resample),
                                     (self.target_size, self.target_interpolation,
                                      self._target_resample)):
            if views and self._same_views:
                views.append(views[0].copy())
            elif isinstance(region, np.ndarray) and name in _TORCH_MODES:
                views.append(_resize_torch(np.ascontiguousarray(region), size,
                                           _TORCH_MODES[name]))
            else:
                if isinstance(region, np.ndarray):
                    region = Image.fromarray(np.ascontiguousarray(region))
                views.append(np.array(region.resize(size[::-1], resample), dtype=np.uint8))
        return views[0], views[1]

    def write(self, results: dict, params: dict, scale: int, view: np.ndarray,
              target: np.ndarray) -> dict:
        top, left, h, w = params['box']
        results.pop('img_encoded', None)
        results['img'] = view
        results['target_img'] = target
        results['img_shape'] = self.img_size
        results['crop_bbox'] = (left, top, left + w, top + h)
        results['flip'] = params['flip']
        results['flip_direction'] = 'horizontal' if params['flip'] else None
        results['decode_scale'] = scale
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(img_size={self.img_size}, '
                f'target_size={self.target_size}, interpolation={self.interpolation!r}, '
                f'target_interpolation={self.target_interpolation!r}, scale={self.scale}, '
                f'ratio={self.ratio}, color_jitter={self.color_jitter}, '
                f'flip_prob={self.flip_prob}, exact={self.exact})')
