"""Detections drawn over their image: translucent masks, box outlines and a
``"class score"`` label per detection, one fixed colour per class.

* :func:`overlay_detections` draws on an RGB array the detections whose score is at least
  ``score_thr``, lowest score first so the most confident one is on top: each mask pixel
  becomes ``round((1 - opacity) * pixel + opacity * colour)``, then the box outline (the
  pixels on the border of the box rounded to whole pixels and clipped to the image) and
  a filled label tag above its top-left corner (inside the box when there is no room
  above) are painted in the class colour.
* :func:`save_det_overlay` writes that drawing as a PNG the image's size, atomically
  (:func:`mmbeit.checkpoint.atomic_output`, as :func:`~mmbeit.visualization.
  save_seg_overlay`); an existing file is kept unless ``overwrite=True``.

Colours come from :func:`~mmbeit.visualization.seg_palette` (class id ``k`` is always row
``k``, whatever else is in the image). Detections are the dict of
:func:`mmbeit.apis.inference_detector`: ``boxes`` ``[N, 4]`` (x1, y1, x2, y2, pixels of
the image), ``labels`` ``[N]``, ``scores`` ``[N]`` and ``masks`` ``[N, H, W]`` bool or
``None``.
"""
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .seg_overlay import _check_image, _read_rgb, _write_png_atomic, seg_palette

__all__ = ['overlay_detections', 'save_det_overlay', 'detection_label']


def detection_label(label: int, score: float, classes: Optional[Sequence[str]] = None) -> str:
    """The tag text of one detection: ``'<class name> 0.87'`` (``'class 3 0.87'`` when the
    id has no name)."""
    name = (str(classes[label]) if classes is not None and 0 <= label < len(classes)
            else f'class {label}')
    return f'{name} {score:.2f}'


def _check_detections(dets: Mapping, img_shape: Sequence[int]):
    if not isinstance(dets, Mapping) or not {'boxes', 'labels', 'scores'} <= set(dets):
        raise ValueError('detections must be a dict with boxes, labels, scores (and masks), '
                         'as mmbeit.apis.inference_detector returns')
    boxes = np.asarray(dets['boxes'], dtype=np.float64)
    labels = np.asarray(dets['labels'])
    scores = np.asarray(dets['scores'], dtype=np.float64)
    n = len(scores)
    if scores.shape != (n, ) or boxes.shape != (n, 4) or labels.shape != (n, ):
        raise ValueError(f'detections must have boxes [N, 4], labels [N] and scores [N] for '
                         f'the same N, got boxes {boxes.shape}, labels {labels.shape}, '
                         f'scores {scores.shape}')
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'detection labels must be integer class ids, got {labels.dtype}')
    if n and labels.min() < 0:
        raise ValueError(f'detection labels must be class ids >= 0, got {int(labels.min())}')
    if not np.isfinite(boxes).all():
        raise ValueError('detection boxes must be finite (x1, y1, x2, y2) pixel coordinates')
    masks = dets.get('masks')
    if masks is not None:
        masks = np.asarray(masks)
        want = (n, ) + tuple(img_shape[:2])
        if masks.shape != want:
            raise ValueError(f'detection masks have shape {masks.shape}, expected {want} '
                             f'(one H x W mask per detection at the image size; '
                             f'inference_detector returns them at the original size)')
        masks = masks.astype(bool)
    return boxes, labels.astype(np.int64), scores, masks


def _palette_for(palette, labels: np.ndarray, classes) -> np.ndarray:
    if palette is None:
        n = max(len(classes) if classes is not None else 0,
                int(labels.max()) + 1 if labels.size else 0)
        return seg_palette(n)
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or (pal.size and (pal.min() < 0 or pal.max() > 255)):
        raise ValueError(f'palette must be K x 3 RGB rows with values in 0..255, got shape '
                         f'{pal.shape}')
    if labels.size and labels.max() >= len(pal):
        raise ValueError(f'detections have class ids up to {int(labels.max())} but the '
                         f'palette has {len(pal)} colours; give a palette with at least '
                         f'{int(labels.max()) + 1} rows (seg_palette(num_classes))')
    return pal.astype(np.uint8)


def _text_colour(rgb: Sequence[int]) -> tuple:
    """Black on light tags, white on dark ones (Rec. 601 luma)."""
    r, g, b = (int(c) for c in rgb)
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def overlay_detections(img_rgb: np.ndarray, detections: Mapping,
                       classes: Optional[Sequence[str]] = None,
                       palette: Optional[np.ndarray] = None, score_thr: float = 0.3,
                       opacity: float = 0.5, line_width: Optional[int] = None) -> np.ndarray:
    """Draw the detections scoring at least ``score_thr`` on an RGB image.

    Args:
        img_rgb: ``H x W x 3`` uint8, RGB.
        detections: ``dict(boxes, labels, scores, masks)`` as
            :func:`mmbeit.apis.inference_detector` returns (``masks`` may be ``None``).
        classes: class names by id for the tags (default: ``class <id>``).
        palette: ``K x 3`` RGB colours, K > the largest drawn id (default:
            ``seg_palette(max(len(classes), largest id + 1))``).
        score_thr: detections below this score are not drawn.
        opacity: weight of the class colour inside a mask, 0 (image only) .. 1.
        line_width: box outline width in pixels (default: 1 below 256 px, else
            ``min(H, W) // 256 + 1``).

    Returns:
        ``H x W x 3`` uint8 RGB; pixels outside every drawn mask, outline and tag are the
        image's.
    """
    img = _check_image(img_rgb, 'img_rgb')
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f'opacity must be in [0, 1], got {opacity}')
    boxes, labels, scores, masks = _check_detections(detections, img.shape)
    keep = np.flatnonzero(scores >= float(score_thr))
    keep = keep[np.argsort(scores[keep], kind='stable')]  # lowest first: the best on top
    pal = _palette_for(palette, labels[keep], classes)
    out = img.copy()
    if masks is not None:
        a = float(opacity)
        for i in keep:
            m = masks[i]
            if m.any():
                colour = pal[labels[i]].astype(np.float64)
                blended = (1.0 - a) * out[m].astype(np.float64) + a * colour
                out[m] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if not len(keep):
        return out
    h, w = img.shape[:2]
    width = line_width if line_width is not None else (min(h, w) // 256 + 1)
    if int(width) < 1:
        raise ValueError(f'line_width must be >= 1, got {line_width}')
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in keep:
        colour = tuple(int(c) for c in pal[labels[i]])
        x1, y1, x2, y2 = np.rint(boxes[i]).astype(np.int64).tolist()
        x1, x2 = max(0, min(x1, x2)), min(w - 1, max(x1, x2))
        y1, y2 = max(0, min(y1, y2)), min(h - 1, max(y1, y2))
        if x1 > x2 or y1 > y2:
            continue  # entirely outside the image
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=int(width))
        text = detection_label(int(labels[i]), float(scores[i]), classes)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2, bottom - top + 2
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top
        tx = min(x1, max(0, w - tw))
        draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=colour)
        draw.text((tx + 1 - left, ty + 1 - top), text, fill=_text_colour(colour), font=font)
    return np.asarray(canvas)


def save_det_overlay(img: Union[str, os.PathLike, np.ndarray], detections: Mapping,
                     out_file: Union[str, os.PathLike],
                     classes: Optional[Sequence[str]] = None,
                     palette: Optional[np.ndarray] = None, score_thr: float = 0.3,
                     opacity: float = 0.5, overwrite: bool = False) -> str:
    """Write :func:`overlay_detections` of ``img`` as a PNG the image's size.

    Args:
        img: an image file path, or an ``H x W x 3`` uint8 array in **BGR** order (mmcv's
            convention, as :func:`mmbeit.apis.inference_detector` takes it).
        detections: the dict of :func:`mmbeit.apis.inference_detector` for that image.
        out_file: the ``.png`` to write; its folder is created.
        classes, palette, score_thr, opacity: as for :func:`overlay_detections`.
        overwrite: replace an existing ``out_file`` (otherwise FileExistsError).

    Returns:
        ``out_file`` as a string.
    """
    out_file = os.fspath(out_file)
    if not out_file.lower().endswith('.png'):
        raise ValueError(f'out_file must name a .png file, got {out_file!r}')
    if os.path.exists(out_file) and not overwrite:
        raise FileExistsError(f'{out_file!r} already exists; pass overwrite=True (or '
                              f'--overwrite) to replace it, or choose another file')
    drawn = overlay_detections(_read_rgb(img), detections, classes, palette, score_thr,
                               opacity)
    _write_png_atomic(Image.fromarray(drawn), out_file, overwrite)
    return out_file
