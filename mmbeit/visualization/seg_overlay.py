"""Segmentation maps drawn over their image: a palette, the blended overlay, and a PNG of
the overlay with a legend of the classes it shows.

* :func:`seg_palette` gives ``K`` distinct colours, the same for the same ``(K, seed)``.
* :func:`overlay_segmentation` blends each labelled pixel with its class colour:
  ``round((1 - opacity) * image + opacity * palette[label])`` per channel; pixels equal
  to ``ignore_index`` keep the image.
* :func:`save_seg_overlay` writes the overlay and, to its right, a legend strip (one row
  per class present: colour swatch, id, name) as a PNG with Pillow. The file is written
  to a temporary name in the same folder and then moved into place
  (:func:`mmbeit.checkpoint.atomic_output`), and an existing file is kept unless
  ``overwrite=True``.

Images given as arrays follow mmcv's convention (``H x W x 3`` uint8, **BGR**) in
:func:`save_seg_overlay`; :func:`overlay_segmentation` works on RGB.
"""
import colorsys
import math
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmbeit.checkpoint import atomic_output

__all__ = ['seg_palette', 'overlay_segmentation', 'save_seg_overlay']

_GOLDEN = 0.6180339887498949


def seg_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """``num_classes`` distinct RGB colours, uint8 ``[K, 3]``, deterministic in ``seed``.

    Hues step by the golden ratio from a start set by ``seed`` (neighbouring class ids
    get far-apart hues); saturation and brightness cycle through a few levels so that
    colours of close hues still differ. Rows are unique for any ``K``: past a few
    thousand classes the 9 saturation / brightness levels run out of distinct rounded
    colours, and the rest come from the unused points of a regular RGB lattice.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
        raise ValueError(f'num_classes must be an integer >= 0, got {num_classes!r}')
    start = np.random.default_rng(seed).random()
    sats, vals = (0.85, 0.55, 1.0), (0.95, 0.7, 0.5)
    colours: List[tuple] = []
    seen = set()
    k = 0
    budget = 32 * num_classes  # the hue walk's steps before the lattice takes over
    while len(colours) < num_classes and k < budget:
        hue = (start + k * _GOLDEN) % 1.0
        level = (k // 7) % (len(sats) * len(vals))
        s, v = sats[level % len(sats)], vals[level // len(sats)]
        rgb = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, s, v))
        k += 1
        if rgb not in seen:  # rounding can repeat a colour for very large K: skip it
            seen.add(rgb)
            colours.append(rgb)
    if len(colours) < num_classes:
        n = 2
        while n ** 3 < 2 * num_classes:  # room for the lattice points the walk took
            n += 1
        levels = np.linspace(0, 255, n).round().astype(int)
        for rgb in ((r, g, b) for r in levels for g in levels for b in levels):
            if len(colours) == num_classes:
                break
            rgb = tuple(int(c) for c in rgb)
            if rgb not in seen:
                seen.add(rgb)
                colours.append(rgb)
    return np.asarray(colours, dtype=np.uint8).reshape(num_classes, 3)


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, 'shape', type(img).__name__)
        raise ValueError(f'{what} must be an H x W x 3 array, got {shape}')
    if img.dtype != np.uint8:
        raise ValueError(f'{what} must be uint8 (0..255), got {img.dtype}')
    return img


def _check_seg(seg_map: np.ndarray, img_shape: Sequence[int]) -> np.ndarray:
    seg = np.asarray(seg_map)
    if seg.ndim == 3 and seg.shape[0] == 1:
        seg = seg[0]
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f'seg_map must be an H x W integer array of class ids, got shape '
                         f'{seg.shape} dtype {seg.dtype}')
    if tuple(seg.shape) != tuple(img_shape[:2]):
        raise ValueError(f'seg_map shape {tuple(seg.shape)} does not match the image '
                         f'(H, W) = {tuple(img_shape[:2])}; resize one to the other (the '
                         f'map of inference_segmentor has the original image size)')
    return seg


def _labels(seg: np.ndarray, ignore_index: Optional[int]) -> np.ndarray:
    labels = np.unique(seg)
    return labels[labels != ignore_index] if ignore_index is not None else labels


def _check_palette(palette, labels: np.ndarray) -> np.ndarray:
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f'palette must be K x 3 (RGB rows), got shape {pal.shape}')
    if pal.size and (pal.min() < 0 or pal.max() > 255):
        raise ValueError('palette values must be in 0..255')
    if labels.size and (labels.min() < 0 or labels.max() >= len(pal)):
        raise ValueError(f'seg_map holds class ids {labels.min()}..{labels.max()} but the '
                         f'palette has {len(pal)} colours; give a palette with at least '
                         f'{labels.max() + 1} rows (seg_palette(num_classes))')
    return pal.astype(np.uint8)


def overlay_segmentation(img_rgb: np.ndarray, seg_map: np.ndarray,
                         palette: Optional[np.ndarray] = None, opacity: float = 0.5,
                         ignore_index: Optional[int] = 255) -> np.ndarray:
    """Blend class colours into an RGB image.

    Args:
        img_rgb: ``H x W x 3`` uint8, RGB.
        seg_map: ``H x W`` integer class ids (``1 x H x W`` is accepted).
        palette: ``K x 3`` RGB colours, K > the largest id (default:
            ``seg_palette(max id + 1)``).
        opacity: weight of the class colour, 0 (image only) .. 1 (colour only).
        ignore_index: pixels with this id keep the image (None: no such pixels).

    Returns:
        ``H x W x 3`` uint8 RGB: ``round((1 - opacity) * img + opacity * palette[id])``
        (rounding half to even) on labelled pixels.
    """
    img = _check_image(img_rgb, 'img_rgb')
    seg = _check_seg(seg_map, img.shape)
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f'opacity must be in [0, 1], got {opacity}')
    labels = _labels(seg, ignore_index)
    if palette is None:
        palette = seg_palette(int(labels.max()) + 1 if labels.size else 0)
    pal = _check_palette(palette, labels)
    out = img.copy()
    mask = seg != ignore_index if ignore_index is not None else np.ones(seg.shape, bool)
    if mask.any():
        a = float(opacity)
        blended = (1.0 - a) * img[mask].astype(np.float64) + a * pal[seg[mask]].astype(
            np.float64)
        out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def _read_rgb(img: Union[str, os.PathLike, np.ndarray]) -> np.ndarray:
    if isinstance(img, (str, os.PathLike)):
        path = os.fspath(img)
        if not osp.isfile(path):
            raise FileNotFoundError(f'image file {path!r} does not exist')
        with Image.open(path) as im:
            return np.asarray(im.convert('RGB'))
    return np.ascontiguousarray(_check_image(img, 'img (a BGR array)')[..., ::-1])


def _legend(labels: np.ndarray, palette: np.ndarray, classes: Optional[Sequence[str]],
            height: int) -> Image.Image:
    """A white strip ``height`` px tall: one row per label (swatch, id, name), in as many
    columns as the rows need."""
    font = ImageFont.load_default()
    pad, swatch, row_h = 4, 10, 14
    texts = [f'{k} {classes[k]}' if classes is not None and k < len(classes) else f'{k}'
             for k in labels.tolist()]
    if not texts:
        texts, labels = ['(no labelled pixels)'], np.zeros(0, np.int64)
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    text_w = max(int(math.ceil(probe.textlength(t, font=font))) for t in texts)
    col_w = pad + swatch + pad + text_w + pad
    rows = max(1, (height - pad) // row_h)
    cols = math.ceil(len(texts) / rows)
    strip = Image.new('RGB', (cols * col_w, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(texts):
        x, y = (i // rows) * col_w + pad, pad + (i % rows) * row_h
        if i < len(labels):
            colour = tuple(int(c) for c in palette[labels[i]])
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=colour,
                           outline=(0, 0, 0))
        draw.text((x + swatch + pad, y - 1), text, fill=(0, 0, 0), font=font)
    return strip


def save_seg_overlay(img: Union[str, os.PathLike, np.ndarray], seg_map: np.ndarray,
                     out_file: Union[str, os.PathLike],
                     classes: Optional[Sequence[str]] = None,
                     palette: Optional[np.ndarray] = None, opacity: float = 0.5,
                     overwrite: bool = False, ignore_index: Optional[int] = 255) -> str:
    """Write the overlay of ``seg_map`` on ``img`` with a legend strip as a PNG.

    Args:
        img: an image file path, or an ``H x W x 3`` uint8 array in **BGR** order (mmcv's
            convention, as :func:`mmbeit.apis.inference_segmentor` takes it).
        seg_map: ``H x W`` class ids, the image's size.
        out_file: the ``.png`` to write; its folder is created.
        classes: class names by id for the legend (default: ids only).
        palette: ``K x 3`` RGB colours (default: ``seg_palette(len(classes))``, or of the
            largest id + 1).
        opacity: weight of the class colour (see :func:`overlay_segmentation`).
        overwrite: replace an existing ``out_file`` (otherwise FileExistsError).
        ignore_index: id of pixels that keep the image and are not in the legend.

    Returns:
        ``out_file`` as a string. The PNG is the image's height; its width is the
        image's plus the legend's.
    """
    out_file = os.fspath(out_file)
    if not out_file.lower().endswith('.png'):
        raise ValueError(f'out_file must name a .png file, got {out_file!r}')
    if osp.exists(out_file) and not overwrite:
        raise FileExistsError(f'{out_file!r} already exists; pass overwrite=True (or '
                              f'--overwrite) to replace it, or choose another file')
    rgb = _read_rgb(img)
    seg = _check_seg(seg_map, rgb.shape)
    labels = _labels(seg, ignore_index)
    if palette is None:
        n = max(len(classes) if classes is not None else 0,
                int(labels.max()) + 1 if labels.size else 0)
        palette = seg_palette(n)
    pal = _check_palette(palette, labels)
    overlay = overlay_segmentation(rgb, seg, pal, opacity, ignore_index)
    legend = _legend(labels, pal, classes, overlay.shape[0])
    canvas = Image.new('RGB', (overlay.shape[1] + legend.width, overlay.shape[0]),
                       (255, 255, 255))
    canvas.paste(Image.fromarray(overlay), (0, 0))
    canvas.paste(legend, (overlay.shape[1], 0))
    _write_png_atomic(canvas, out_file, overwrite)
    return out_file


def _write_png_atomic(image: Image.Image, out_file: str, overwrite: bool) -> None:
    """Write the PNG through :func:`mmbeit.checkpoint.atomic_output` (a temporary file
    renamed onto ``out_file`` when complete, removed on an error)."""
    with atomic_output(out_file) as tmp:
        with open(tmp, 'xb') as f:
            image.save(f, format='PNG')
        if not overwrite and osp.exists(out_file):  # appeared while the PNG was encoded
            raise FileExistsError(f'{out_file!r} already exists; pass overwrite=True (or '
                                  f'--overwrite) to replace it, or choose another file')
