"""Read an image file as 8-bit RGB, whatever its mode (beit-spec.md section 4.2).

The reference pretraining code reads every image with ``PIL.Image.open(f).convert('RGB')``
(torchvision's ``ImageFolder`` loader). :class:`LoadImageRGB` does the same for the
ordinary modes, so the pixels equal the reference's, and fixes the modes where that
call gives wrong pixels:

* ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``RGBX``, ...: Pillow's own conversion to RGB
  (a grey value v becomes (v, v, v); CMYK uses Pillow's plain formula).
* Alpha (``LA``, ``RGBA``, ``PA``, ``P`` with a ``transparency`` entry): the alpha
  channel is **dropped**, the stored colour of every pixel is kept (no compositing).
  That is what ``convert('RGB')`` does, hence what the reference trained on. A palette
  image with transparency goes through RGBA first, so Pillow does not warn.
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): ``value >> 8`` (0xABCD -> 0xAB)
  in all three channels. Pillow's ``convert('RGB')`` would clip every value above 255
  to white.
* 32-bit integer grey (``I``): when every value lies in [0, 65535] (16-bit data in a
  32-bit container) as 16-bit, ``value >> 8``; otherwise negatives become 0 and the
  signed 32-bit range is scaled down, ``value >> 23``.
* 32-bit float grey (``F``): taken as [0, 1], ``round(clip(value, 0, 1) * 255)``.
* 16-bit-per-channel RGB(A) PNGs: Pillow itself opens them as 8-bit ``RGB`` / ``RGBA``
  keeping the high byte of each channel; they then follow the rules above.

Multi-frame files give their first frame. EXIF orientation is not applied (neither
does the reference loader). Channel order is **RGB**, unlike mmcv's
``LoadImageFromFile`` (BGR by default).

A file that cannot be read or decoded raises at once, naming the file and the reason,
e.g. ``OSError: cannot decode image data/x/bad.jpg: cannot identify the image format``.
Nothing is skipped silently.
"""
import io
from typing import Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine import fileio
from PIL import Image

from mmbeit.registry import TRANSFORMS

__all__ = ['LoadImageRGB', 'pil_to_rgb']

_UINT16_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """An HxWx3 uint8 RGB array of a Pillow image of any mode (rules in the module doc).

    Raises ``ValueError`` for a mode that Pillow cannot turn into RGB.
    """
    mode = img.mode
    if mode in _UINT16_MODES:
        return _grey_to_rgb(np.asarray(img).astype(np.uint16) >> 8)
    if mode == 'I':
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            return _grey_to_rgb(np.clip(values, 0, 2**31 - 1) >> 23)
        return _grey_to_rgb(values >> 8)
    if mode == 'F':
        values = np.asarray(img, dtype=np.float64)
        return _grey_to_rgb(np.round(np.clip(values, 0.0, 1.0) * 255.0))
    if mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    elif mode in ('La', 'RGBa'):   # premultiplied alpha: undo it first
        img = img.convert('LA' if mode == 'La' else 'RGBA')
    if img.mode != 'RGB':
        img = img.convert('RGB')
    return np.array(img, dtype=np.uint8)


@TRANSFORMS.register_module()
class LoadImageRGB(BaseTransform):
    """Read ``results['img_path']`` with Pillow as an 8-bit RGB image (spec 4.2).

    Sets ``img`` (HxWx3 uint8 numpy array, RGB order), ``img_shape`` and ``ori_shape``
    (both ``(H, W)``). See the module docstring for the conversion of every mode:
    alpha is dropped, 16-bit grey is scaled with ``>> 8``.

    Args:
        backend_args (dict, optional): passed to ``mmengine.fileio.get`` to read the
            bytes (local files by default).

    Raises:
        FileNotFoundError: ``cannot read image PATH: no such file``.
        OSError: ``cannot decode image PATH: REASON`` for data Pillow cannot decode
            (unknown format, truncated file, too many pixels, unconvertible mode).
    """

    def __init__(self, backend_args: Optional[dict] = None):
        self.backend_args = None if backend_args is None else dict(backend_args)

    def transform(self, results: dict) -> dict:
        path = results['img_path']
        img = self.load(path)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def load(self, path) -> np.ndarray:
        """The HxWx3 uint8 RGB pixels of the image file ``path``."""
        try:
            data = fileio.get(path, backend_args=self.backend_args)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'cannot read image {path}: no such file') from e
        except IsADirectoryError as e:
            raise IsADirectoryError(f'cannot read image {path}: it is a directory') from e
        except OSError as e:
            raise OSError(f'cannot read image {path}: {e}') from e
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return pil_to_rgb(img)
        except Image.UnidentifiedImageError as e:
            raise OSError(f'cannot decode image {path}: cannot identify the image '
                          f'format') from e
        except (OSError, SyntaxError, ValueError, EOFError,
                Image.DecompressionBombError) as e:
            raise OSError(f'cannot decode image {path}: {e}') from e

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(backend_args={self.backend_args})'
