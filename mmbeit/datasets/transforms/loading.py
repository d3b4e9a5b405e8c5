"""Read an image file as 8-bit RGB, whatever its mode (as unilm beit/datasets.py reads them).

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

Deferred decoding (``LoadImageRGB(lazy=True)``): only the bytes are read and the header
parsed (format, size, mode; a file that is not an image still fails here). The pixels
are decoded later by :class:`~mmbeit.datasets.transforms.BEiTMaskedViews`, once, after it
has drawn its crop box: a JPEG whose crop is large enough is then decoded at 1/2, 1/4 or
1/8 of its size by libjpeg's DCT scaling (Pillow's ``Image.draft``), which is several
times cheaper than decoding every pixel. :class:`EncodedImage` holds what is deferred;
its :meth:`~EncodedImage.decode` applies the same mode rules and raises the same errors,
naming the file.
"""
import io
from contextlib import contextmanager
from typing import Optional, Tuple

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine import fileio
from PIL import Image, JpegImagePlugin

from mmbeit.registry import TRANSFORMS

__all__ = ['LoadImageRGB', 'EncodedImage', 'pil_to_rgb']

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

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@contextmanager
def _decode_errors(path):
    """Turn Pillow's errors into ``OSError('cannot decode image PATH: REASON')``."""
    try:
        yield
    except Image.UnidentifiedImageError as e:
        raise OSError(f'cannot decode image {path}: cannot identify the image '
                      f'format') from e
    except _DECODE_ERRORS as e:
        raise OSError(f'cannot decode image {path}: {e}') from e


class EncodedImage:
    """The bytes of an image file and what its header says, for a decode deferred to
    :class:`~mmbeit.datasets.transforms.BEiTMaskedViews` (``LoadImageRGB(lazy=True)``).

    Creating it parses the header only: the format must be one Pillow identifies
    (``OSError: cannot decode image PATH: cannot identify the image format`` otherwise).

    Args:
        data (bytes): the file's contents.
        path (str): the file's path, for error messages.

    Attributes:
        width, height (int): the image size from the header.
        mode (str): Pillow's mode of the stored pixels ('RGB', 'L', 'CMYK', ...).
        is_jpeg (bool): whether the file is a JPEG, whose decoding can be scaled down.
    """

    __slots__ = ('data', 'path', 'width', 'height', 'mode', 'is_jpeg')

    def __init__(self, data: bytes, path: str):
        self.data, self.path = data, path
        with _decode_errors(path), Image.open(io.BytesIO(data)) as img:
            self.width, self.height = img.size
            self.mode = img.mode
            self.is_jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)

    @property
    def shape(self) -> Tuple[int, int]:
        """(H, W) of the stored image."""
        return self.height, self.width

    def decode(self, reduce: int = 1) -> Tuple[Image.Image, int]:
        """Decode the pixels as an RGB Pillow image, with the mode rules of ``pil_to_rgb``.

        Args:
            reduce (int): 1, 2, 4 or 8. For a JPEG, decode at 1/``reduce`` of the size
                (libjpeg's DCT scaling through ``Image.draft``): the result is
                ``ceil(W / reduce) x ceil(H / reduce)`` and its pixel (i, j) stands for
                the original pixels ``[reduce * i, reduce * (i + 1))`` (same in j).
                Other formats are always decoded whole. Defaults to 1.

        Returns:
            tuple: the RGB image and the reduction actually applied (1 unless a JPEG was
            scaled down).

        Raises:
            OSError: ``cannot decode image PATH: REASON``.
        """
        if reduce not in (1, 2, 4, 8):
            raise ValueError(f'EncodedImage.decode: reduce must be 1, 2, 4 or 8, got '
                             f'{reduce!r}')
        with _decode_errors(self.path), Image.open(io.BytesIO(self.data)) as img:
            applied = 1
            if reduce > 1 and self.is_jpeg:
                # The requested size makes Pillow pick exactly this scale (its rule:
                # the largest of 8, 4, 2 not above min(W // w, H // h)).
                drafted = img.draft(None, (max(1, self.width // reduce),
                                           max(1, self.height // reduce)))
                if drafted is not None:
                    applied = round(self.width / drafted[1][2])
            img.load()
            if img.mode == 'RGB':
                return img.copy() if img.readonly else img, applied
            return Image.fromarray(pil_to_rgb(img)), applied


@TRANSFORMS.register_module()
class LoadImageRGB(BaseTransform):
    """Read ``results['img_path']`` with Pillow as an 8-bit RGB image (unilm datasets.py).

    Sets ``img`` (HxWx3 uint8 numpy array, RGB order), ``img_shape`` and ``ori_shape``
    (both ``(H, W)``). See the module docstring for the conversion of every mode:
    alpha is dropped, 16-bit grey is scaled with ``>> 8``.

    With ``lazy=True`` it sets ``img_encoded`` (an :class:`EncodedImage`: the bytes and
    the header) instead of ``img``, and ``img_shape`` / ``ori_shape`` from the header;
    :class:`~mmbeit.datasets.transforms.BEiTMaskedViews` decodes it after drawing its
    crop, scaled down when the crop allows. Use it only right before BEiTMaskedViews:
    other transforms need ``img``. The pixels then decoded follow the same mode rules,
    and a file that is an image but cannot be decoded (a truncated JPEG) fails there with
    the same message.

    Args:
        backend_args (dict, optional): passed to ``mmengine.fileio.get`` to read the
            bytes (local files by default).
        lazy (bool): defer the decoding to BEiTMaskedViews (see above). Defaults to
            False.

    Raises:
        FileNotFoundError: ``cannot read image PATH: no such file``.
        OSError: ``cannot decode image PATH: REASON`` for data Pillow cannot decode
            (unknown format, truncated file, too many pixels, unconvertible mode).
    """

    def __init__(self, backend_args: Optional[dict] = None, lazy: bool = False):
        self.backend_args = None if backend_args is None else dict(backend_args)
        if not isinstance(lazy, bool):
            raise TypeError(f'LoadImageRGB: lazy must be True or False, got {lazy!r}')
        self.lazy = lazy

    def transform(self, results: dict) -> dict:
        path = results['img_path']
        if self.lazy:
            encoded = EncodedImage(self.read(path), path)
            results['img_encoded'] = encoded
            results['img_shape'] = encoded.shape
            results['ori_shape'] = encoded.shape
            return results
        img = self.load(path)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def read(self, path) -> bytes:
        """The bytes of the file ``path``."""
        try:
            return fileio.get(path, backend_args=self.backend_args)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'cannot read image {path}: no such file') from e
        except IsADirectoryError as e:
            raise IsADirectoryError(f'cannot read image {path}: it is a directory') from e
        except OSError as e:
            raise OSError(f'cannot read image {path}: {e}') from e

    @staticmethod
    def decode(data: bytes, path) -> np.ndarray:
        """The HxWx3 uint8 RGB pixels of the encoded image ``data`` read from ``path``."""
        with _decode_errors(path), Image.open(io.BytesIO(data)) as img:
            img.load()
            return pil_to_rgb(img)

    def load(self, path) -> np.ndarray:
        """The HxWx3 uint8 RGB pixels of the image file ``path``."""
        return self.decode(self.read(path), path)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(backend_args={self.backend_args}, '
                f'lazy={self.lazy})')
