"""Write the bundled demo datasets: small, deterministic, with structure to learn.

Two layouts, the ones mmbeit reads for real data:

* ImageNet layout (classification and pretraining)::

    OUT/imagenet/train/<class>/<class>_0000.png   OUT/imagenet/val/<class>/...
    OUT/imagenet/meta/train.txt   lines '<class>/<file> <label>' (mmpretrain's ImageNet reader)
    OUT/imagenet/meta/val.txt     OUT/imagenet/meta/classes.txt (one class name a line)

  Each image shows one shape of its class (circle, square, triangle, ...) at a random
  place, size and small tilt over a random smooth background with noise, filled with
  the class's texture (solid, stripes, checker, ...) in two random colours: the class
  shows globally (shape) and locally (texture), never in a colour statistic.

* ADE20K layout (segmentation)::

    OUT/ade20k/images/{training,validation}/ADE_{train,val}_%08d.jpg
    OUT/ade20k/annotations/{training,validation}/ADE_{train,val}_%08d.png
    OUT/ade20k/meta/classes.txt

  Annotations are uint8 PNGs: 0 = ignore (a thin band around each object, as ADE20K's
  "other" pixels), 1 = wall, 2 = floor, 3.. = one shape class each. mmseg's ADE20K
  pipeline with ``reduce_zero_label=True`` turns 0 into 255 (ignored) and k into k - 1.
  Read it with ``mmseg.BaseSegDataset`` (img_suffix='.jpg', seg_map_suffix='.png',
  reduce_zero_label=True, metainfo=dict(classes=...)): ``ADE20KDataset`` accepts only
  subsets of ADE's own 150 classes.

* COCO layout (detection and instance segmentation)::

    OUT/coco/train/%012d.png   OUT/coco/val/%012d.png
    OUT/coco/annotations/instances_{train,val}.json

  Each image holds 2 to 5 shape instances (the same shape classes and textures as above,
  category ids 1..8 in ``SHAPES`` order) over a random background. Later shapes may cover
  part of earlier ones (each keeps at least half of its pixels visible); an instance's
  ``segmentation`` is the mask of its *visible* pixels, exactly the pixels painted for it
  and not painted over, as uncompressed RLE (``{'size': [h, w], 'counts': [...]}``,
  column-major runs starting with background, as pycocotools reads it). RLE rather than
  polygons because it is exact: rings have holes and occluded shapes can fall apart into
  pieces, which COCO polygons (no holes, rasterised by their own rule) cannot match
  pixel for pixel. ``bbox`` is the tight ``[x, y, w, h]`` box of that mask in pixels and
  ``area`` its pixel count (in COCO's own files ``area`` is the mask area, not the box's);
  ``iscrowd`` is 0. Images are PNG, so the pixels are exactly the ones drawn. Image and
  annotation ids start at 1 (COCOeval treats a matched ground-truth id of 0 as no match).
  Read it with mmdet's ``CocoDataset`` and ``metainfo=dict(classes=SHAPES)``.

Everything derives from ``--seed``: the same arguments write the same bytes (each layout
has its own random stream, so adding one does not change the others). About five
seconds for the defaults on two CPU cores (the COCO set about two of them).

Usage::

    python tools/misc/make_demo_data.py [--out data/demo] [--seed 0] [--force]
"""
import argparse
import json
import os
import os.path as osp
import sys

import cv2
import numpy as np

SHAPES = ('circle', 'square', 'triangle', 'cross', 'ring', 'diamond', 'bar', 'star')
SEG_CLASSES = ('wall', 'floor') + SHAPES[:6]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour field around a random grey plus pixel noise, [H, W, 3]
    float in [0, 255]: varied enough that colour says nothing about the class, calm
    enough that the shape stands out."""
    grey = rng.uniform(60, 196)
    coarse = (grey + rng.uniform(-45, 45, size=(3, 3, 3))).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)
    return np.clip(field, 0, 255)


def _shape_mask(shape: str, rng: np.random.Generator, h: int, w: int,
                centre=None, size=None) -> np.ndarray:
    """A [H, W] uint8 mask (1 inside) of one shape at a random pose."""
    m = np.zeros((h, w), np.uint8)
    s = size if size is not None else rng.uniform(0.22, 0.36) * min(h, w)
    if centre is None:
        centre = (rng.uniform(s, w - s), rng.uniform(s, h - s))
    cx, cy = centre
    # Small tilts only: a square turned by 45 degrees would look like a diamond.
    angle = rng.uniform(-0.4, 0.4)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def poly(points):
        pts = np.asarray(points, np.float64) @ rot.T * s + (cx, cy)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)

    if shape == 'circle':
        cv2.circle(m, (round(cx), round(cy)), round(s), 1, -1)
    elif shape == 'ring':
        cv2.circle(m, (round(cx), round(cy)), round(s), 1, max(2, round(s * 0.35)))
    elif shape == 'square':
        poly([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)])
    elif shape == 'diamond':
        poly([(0, -1.1), (0.6, 0), (0, 1.1), (-0.6, 0)])
    elif shape == 'triangle':
        poly([(0, -1), (0.95, 0.7), (-0.95, 0.7)])
    elif shape == 'bar':
        poly([(-1.1, -0.25), (1.1, -0.25), (1.1, 0.25), (-1.1, 0.25)])
    elif shape == 'cross':
        poly([(-1, -0.25), (1, -0.25), (1, 0.25), (-1, 0.25)])
        poly([(-0.25, -1), (0.25, -1), (0.25, 1), (-0.25, 1)])
    elif shape == 'star':
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        poly(np.stack([r * np.sin(t), -r * np.cos(t)], 1))
    else:
        raise ValueError(f'unknown shape {shape!r}')
    return m


# One fill texture per shape class (period about 6 px at 96 px, i.e. within one patch
# of the demo models), so that the class shows both globally (shape) and locally
# (texture). The texture mixes two random colours: colour still says nothing.
TEXTURES = ('solid', 'hstripes', 'vstripes', 'diag', 'antidiag', 'checker', 'dots', 'grid')


def _texture(kind: str, h: int, w: int, period: int = 6) -> np.ndarray:
    """A [H, W] float mask in {0, 1}: where the second colour of a fill goes."""
    y, x = np.mgrid[0:h, 0:w]
    half = period // 2
    if kind == 'solid':
        return np.zeros((h, w))
    if kind == 'hstripes':
        return (y % period < half).astype(float)
    if kind == 'vstripes':
        return (x % period < half).astype(float)
    if kind == 'diag':
        return ((x + y) % period < half).astype(float)
    if kind == 'antidiag':
        return ((x - y) % period < half).astype(float)
    if kind == 'checker':
        return ((x // half + y // half) % 2).astype(float)
    if kind == 'dots':
        return (((x % period) - half) ** 2 + ((y % period) - half) ** 2 <= 2).astype(float)
    if kind == 'grid':
        return ((x % period == 0) | (y % period == 0)).astype(float)
    raise ValueError(f'unknown texture {kind!r}')


def _contrasting(rng: np.random.Generator, other: np.ndarray, min_l1: float) -> np.ndarray:
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - other).sum() < min_l1:
        colour = rng.uniform(0, 255, 3)
    return colour


def _paint(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
           texture: str = 'solid') -> None:
    """Fill `mask` in `img` with `texture` in two random colours that stand out from
    what is under it."""
    under = img[mask > 0].mean(0) if mask.any() else np.full(3, 128.0)
    first = _contrasting(rng, under, 200)
    second = _contrasting(rng, first, 200)
    pattern = _texture(texture, *img.shape[:2])[..., None]          # [H, W, 1]
    fill = first * (1 - pattern) + second * pattern                  # [H, W, 3]
    fill += rng.normal(0, 8, size=img.shape)
    img[mask > 0] = np.clip(fill[mask > 0], 0, 255)


def _write(path: str, img: np.ndarray) -> None:
    ok = cv2.imwrite(path, img)
    if not ok:
        raise OSError(f'could not write {path}')


def make_imagenet(out: str, rng: np.random.Generator, per_class: dict, size: int) -> None:
    os.makedirs(osp.join(out, 'meta'), exist_ok=True)
    with open(osp.join(out, 'meta', 'classes.txt'), 'w') as f:
        f.write('\n'.join(SHAPES) + '\n')
    for split, n in per_class.items():
        lines = []
        for label, name in enumerate(SHAPES):
            os.makedirs(osp.join(out, split, name), exist_ok=True)
            for i in range(n):
                img = _background(rng, size, size)
                _paint(img, _shape_mask(name, rng, size, size), rng, TEXTURES[label])
                rel = f'{name}/{name}_{i:04d}.png'
                _write(osp.join(out, split, rel), img.astype(np.uint8)[..., ::-1])
                lines.append(f'{rel} {label}')
        with open(osp.join(out, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')


def make_ade20k(out: str, rng: np.random.Generator, counts: dict, size: int) -> None:
    os.makedirs(osp.join(out, 'meta'), exist_ok=True)
    with open(osp.join(out, 'meta', 'classes.txt'), 'w') as f:
        f.write('\n'.join(SEG_CLASSES) + '\n')
    for split, n in counts.items():
        tag = 'train' if split == 'training' else 'val'
        for sub in ('images', 'annotations'):
            os.makedirs(osp.join(out, sub, split), exist_ok=True)
        for i in range(n):
            img = _background(rng, size, size)
            seg = np.ones((size, size), np.uint8)                    # 1 = wall
            horizon = int(rng.uniform(0.45, 0.75) * size)
            floor = np.zeros((size, size), np.uint8)
            floor[horizon:] = 1
            _paint(img, floor, rng)
            seg[horizon:] = 2                                         # 2 = floor
            for _ in range(rng.integers(1, 4)):
                k = int(rng.integers(0, 6))
                m = _shape_mask(SHAPES[k], rng, size, size,
                                size=rng.uniform(0.12, 0.22) * size)
                _paint(img, m, rng, TEXTURES[k])
                band = cv2.dilate(m, np.ones((3, 3), np.uint8)) - cv2.erode(
                    m, np.ones((3, 3), np.uint8))
                seg[m > 0] = 3 + k
                seg[band > 0] = 0                                     # 0 = ignore
            name = f'ADE_{tag}_{i + 1:08d}'
            _write(osp.join(out, 'images', split, name + '.jpg'),
                   img.astype(np.uint8)[..., ::-1])
            _write(osp.join(out, 'annotations', split, name + '.png'), seg)


def rle_encode(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a [H, W] 0/1 mask: run lengths over the column-major
    (Fortran order) pixels, the first run counting zeros (0 when the mask starts set)."""
    flat = (mask.ravel(order='F') > 0).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': counts}


def tight_box(mask: np.ndarray) -> list:
    """The COCO ``[x, y, w, h]`` box (pixels) that holds every set pixel of `mask`."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


# At least this share of each instance's pixels stays visible when later shapes cover it,
# and an instance keeps at least this many pixels; a placement breaking either is redrawn.
MIN_VISIBLE = 0.5
MIN_PIXELS = 40


def _coco_layout(rng: np.random.Generator, size: int) -> list:
    """(class index, full mask) of 2-5 shapes, in painting order, placed so that each
    keeps at least MIN_VISIBLE of its pixels once the later ones are painted."""
    placed = []
    for _ in range(int(rng.integers(2, 6))):
        for _try in range(20):
            k = int(rng.integers(0, len(SHAPES)))
            m = _shape_mask(SHAPES[k], rng, size, size, size=rng.uniform(0.1, 0.2) * size)
            # Walk back from the candidate (on top) to the first shape, with what covers
            # each one: every shape after it, the candidate included.
            cover = m > 0
            ok = m.sum() >= MIN_PIXELS
            for _k, earlier in reversed(placed):
                visible = (earlier > 0) & ~cover
                ok = ok and visible.sum() >= max(MIN_PIXELS, MIN_VISIBLE * earlier.sum())
                cover |= earlier > 0
            if ok:
                placed.append((k, m))
                break
    return placed


def make_coco(out: str, rng: np.random.Generator, counts: dict, size: int) -> None:
    os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
    categories = [{'id': k + 1, 'name': name, 'supercategory': 'shape'}
                  for k, name in enumerate(SHAPES)]
    for split, n in counts.items():
        os.makedirs(osp.join(out, split), exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            image_id = i + 1
            file_name = f'{image_id:012d}.png'
            img = _background(rng, size, size)
            owner = np.zeros((size, size), np.int32)   # which instance (1-based) shows
            layout = _coco_layout(rng, size)
            for j, (k, m) in enumerate(layout):
                _paint(img, m, rng, TEXTURES[k])
                owner[m > 0] = j + 1
            for j, (k, _m) in enumerate(layout):
                visible = (owner == j + 1).astype(np.uint8)
                annotations.append({
                    'id': len(annotations) + 1, 'image_id': image_id, 'category_id': k + 1,
                    'bbox': tight_box(visible), 'area': int(visible.sum()), 'iscrowd': 0,
                    'segmentation': rle_encode(visible)})
            _write(osp.join(out, split, file_name), img.astype(np.uint8)[..., ::-1])
            images.append({'id': image_id, 'file_name': file_name, 'width': size,
                           'height': size})
        dataset = {'info': {'description': 'mmbeit demo shapes (tools/misc/make_demo_data.py)'},
                   'images': images, 'annotations': annotations, 'categories': categories}
        with open(osp.join(out, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dataset, f, separators=(',', ':'))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/demo', help='output folder (default data/demo)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train-per-class', type=int, default=80)
    parser.add_argument('--val-per-class', type=int, default=20)
    parser.add_argument('--cls-size', type=int, default=96, help='classification image side')
    parser.add_argument('--seg-train', type=int, default=160)
    parser.add_argument('--seg-val', type=int, default=40)
    parser.add_argument('--seg-size', type=int, default=128, help='segmentation image side')
    parser.add_argument('--coco-train', type=int, default=100)
    parser.add_argument('--coco-val', type=int, default=25)
    parser.add_argument('--coco-size', type=int, default=128, help='COCO image side')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing output folder (otherwise it is kept, and '
                        'only a layout it lacks is added)')
    args = parser.parse_args(argv)

    from mmbeit.checkpoint import atomic_output

    cv2.setNumThreads(1)
    layouts = {
        'imagenet': lambda out: make_imagenet(
            out, np.random.default_rng([args.seed, 1]),
            {'train': args.train_per_class, 'val': args.val_per_class}, args.cls_size),
        'ade20k': lambda out: make_ade20k(
            out, np.random.default_rng([args.seed, 2]),
            {'training': args.seg_train, 'validation': args.seg_val}, args.seg_size),
        'coco': lambda out: make_coco(
            out, np.random.default_rng([args.seed, 3]),
            {'train': args.coco_train, 'val': args.coco_val}, args.coco_size),
    }
    if osp.exists(args.out) and not args.force:
        # keep what is there; add a layout this version writes and the folder lacks (a
        # demo folder from before the COCO set). Each layout has its own random stream,
        # so the added one is the one a fresh run would write.
        missing = [name for name in layouts if not osp.exists(osp.join(args.out, name))]
        if not missing:
            print(f'[make_demo_data] {args.out} exists; keeping it (pass --force to rewrite)')
            return 0
        for name in missing:
            with atomic_output(osp.join(args.out, name)) as tmp:
                layouts[name](tmp)
        print(f'[make_demo_data] {args.out} exists; kept it and added {", ".join(missing)} '
              f'(pass --force to rewrite all)')
        return 0

    # Build in a temporary sibling folder that replaces args.out only when complete: an
    # interrupted run leaves no half-written dataset under the final name, and with
    # --force the old one stays until the new one is there.
    with atomic_output(args.out.rstrip('/') or args.out) as tmp:
        for name, make in layouts.items():
            make(osp.join(tmp, name))
    print(f'[make_demo_data] wrote {args.out}: imagenet ({len(SHAPES)} classes, '
          f'{args.train_per_class}/{args.val_per_class} per class, {args.cls_size}px), '
          f'ade20k ({len(SEG_CLASSES)} classes, {args.seg_train}/{args.seg_val} images, '
          f'{args.seg_size}px), coco ({len(SHAPES)} classes, '
          f'{args.coco_train}/{args.coco_val} images, {args.coco_size}px)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
