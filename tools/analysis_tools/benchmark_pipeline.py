"""Throughput of the BEiT pretraining data pipeline on one CPU core, stage by stage.

Measures the ``train_pipeline`` of a pretraining dataset config (default: BEiT v2's,
``configs/_base_/datasets/imagenet_beitv2_pretrain.py``; ``--config`` for v1's
``imagenet_beit_pretrain.py`` or any other) on real photographs re-encoded as JPEG, and
says how many CPU cores one GPU needs at a given training speed.

Images: the sample photos that scikit-learn (``china.jpg``, ``flower.jpg``) and
scikit-image (astronaut, coffee, chelsea, rocket, immunohistochemistry, and ``camera``
as a greyscale JPEG) ship, centre-cropped to the aspect ratio and resized (Lanczos) to
ImageNet-like sizes, 500 x 375, 375 x 500, 500 x 333 and 500 x 500, and to two larger
ones, 800 x 600 and 1200 x 900, then saved as baseline JPEG, quality 90, 4:2:0, into a
temporary folder (``--image-dir`` keeps them). The source photos are at most 640 px
wide, so the large sizes are upscaled: smoother than a camera image of that size, they
decode somewhat faster. Nothing is downloaded.

Two implementations, each in its own subprocess, alternating over ``--repeats`` rounds
(medians reported):

- ``reference``: the computation of the original BEiT code, written here with
  torchvision's PIL operations as the unilm pretraining dataset does: decode the whole
  image (``LoadImageRGB``'s eager path), ``ColorJitter`` on the whole image, flip, one
  ``RandomResizedCrop`` box cropped and resized twice with Pillow;
- ``config``: the config's pipeline as mmbeit builds it (``LoadImageRGB`` ->
  ``BEiTMaskedViews`` -> [``MIMMask``] -> ``PackMIMInputs``).

Both run the config's own mask and pack transforms, with the config's view sizes,
filters, scale range and jitter. Every process uses one thread (``torch``, OpenCV and the
OpenMP / BLAS pools), as one dataloader worker does.

Per stage (ms per image, averaged over all images): read bytes, decode, jitter, flip +
crop + resize x2, mask (when the pipeline has a mask transform), pack, and the rest
(random draws, checks, conversions). The stage times come from a separate, instrumented
pass; the whole-pipeline speed is timed without instrumentation, as images per second
on one core over all images, and separately over the ImageNet-size ones (longest side
500) and the large ones. "cores per GPU" is the target speed divided by the
whole-pipeline speed. Times are the process's CPU time (``time.process_time``; one
thread), which other load on a shared machine inflates much less than wall-clock time.

Older versions of the transforms (without the step methods) are timed as one stage per
transform, so ``PYTHONPATH=/path/to/old/checkout`` measures a previous version.

Example::

    python tools/analysis_tools/benchmark_pipeline.py --repeats 5
    python tools/analysis_tools/benchmark_pipeline.py \\
        --config configs/_base_/datasets/imagenet_beit_pretrain.py
    python tools/analysis_tools/benchmark_pipeline.py --smoke     # CI: a few images
"""
import argparse
import io
import json
import os
import os.path as osp
import sys
import tempfile
import time

# One thread everywhere, set before numpy / torch / cv2 load their pools (children
# inherit the environment).
for _var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[_var] = '1'

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from benchmark_common import medians, run_rounds  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(ROOT, 'configs', '_base_', 'datasets',
                          'imagenet_beitv2_pretrain.py')
IMPLS = ('reference', 'config')
SIZES = ((500, 375), (375, 500), (500, 333), (500, 500), (800, 600), (1200, 900))
SMOKE_SIZES = ((500, 375), (800, 600))
STAGES = ('read bytes', 'decode', 'jitter', 'flip + crop + resize x2', 'mask', 'pack',
          'other (draws, checks, conversions)')
SKIMAGE_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry',
                  'camera')
INSTALL_HINT = ('the benchmark photos come from scikit-learn and scikit-image: '
                'pip install -r requirements/tests.txt (or bash tools/install.sh --tests)')


# ---------------------------------------------------------------------------- images

def sample_photos() -> dict:
    """name -> HxW(x3) uint8 array of every bundled photo (nothing is downloaded)."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        sys.exit(f'benchmark_pipeline: {e}; {INSTALL_HINT}')
    sk = load_sample_images()
    photos = {osp.splitext(osp.basename(f))[0]: img
              for f, img in zip(sk.filenames, sk.images)}
    for name in SKIMAGE_PHOTOS:
        photos[name] = getattr(skimage.data, name)()
    return photos


def cover(img, size):
    """Centre crop of a PIL image to the aspect ratio of ``size`` (w, h), resized to it."""
    from PIL import Image
    w, h = img.size
    tw, th = size
    if w * th > h * tw:            # too wide: crop the sides
        cw, ch = round(h * tw / th), h
    else:
        cw, ch = w, round(w * th / tw)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return img.resize(size, Image.Resampling.LANCZOS, box=(x0, y0, x0 + cw, y0 + ch))


def write_images(folder: str, sizes=SIZES, max_photos=None) -> list:
    """JPEGs of every photo at every size into ``folder``; their paths, sorted."""
    from PIL import Image

    from mmbeit.checkpoint import atomic_output
    os.makedirs(folder, exist_ok=True)
    paths = []
    photos = sorted(sample_photos().items())[:max_photos]
    for name, array in photos:
        img = Image.fromarray(array)
        for size in sizes:
            path = osp.join(folder, f'{name}_{size[0]}x{size[1]}.jpg')
            if not osp.exists(path):
                with atomic_output(path) as tmp:
                    cover(img, size).save(tmp, 'JPEG', quality=90, subsampling='4:2:0')
            paths.append(path)
    return sorted(paths)


# ---------------------------------------------------------------------------- children

def build_pipeline(config: str) -> list:
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import mmbeit.datasets  # noqa: F401  (registers the transforms)
    from mmbeit.registry import TRANSFORMS
    cfg = Config.fromfile(config)
    if 'train_pipeline' not in cfg:
        sys.exit(f'benchmark_pipeline: {config} has no train_pipeline; give a pretraining '
                 'dataset config such as configs/_base_/datasets/imagenet_beitv2_pretrain.py')
    with DefaultScope.overwrite_default_scope('mmbeit'):
        return [TRANSFORMS.build(t) for t in cfg.train_pipeline]


def _find(pipeline, name):
    return next((t for t in pipeline if type(t).__name__ == name), None)


class Timer:
    """Adds the seconds since the last ``tick`` to a stage."""

    def __init__(self):
        self.totals = {s: 0.0 for s in STAGES}
        self.last = time.process_time()

    def start(self):
        self.last = time.process_time()

    def tick(self, stage):
        now = time.process_time()
        self.totals[stage] += now - self.last
        self.last = now


def _rest(pipeline):
    """The pipeline's transforms after BEiTMaskedViews, each with its stage."""
    views = _find(pipeline, 'BEiTMaskedViews')
    rest = pipeline[pipeline.index(views) + 1:]
    return [(t, 'pack' if type(t).__name__.startswith('Pack') else
             'mask' if 'Mask' in type(t).__name__ else 'other (draws, checks, conversions)')
            for t in rest]


class Reference:
    """The original computation (torchvision on PIL), see the module docstring."""

    def __init__(self, pipeline):
        import torch
        from PIL import Image
        from torchvision import transforms as T

        from mmbeit.datasets.transforms import PIL_INTERPOLATIONS, pil_to_rgb
        views = _find(pipeline, 'BEiTMaskedViews')
        load = _find(pipeline, 'LoadImageRGB')
        if views is None or load is None:
            sys.exit('benchmark_pipeline: the pipeline needs LoadImageRGB and '
                     'BEiTMaskedViews (a BEiT pretraining pipeline)')
        self.torch, self.Image, self.T, self.pil_to_rgb = torch, Image, T, pil_to_rgb
        self.backend_args = load.backend_args
        b, c, s, h = views.color_jitter or (0, 0, 0, 0)
        self.jitter = T.ColorJitter(b, c, s, h) if views.color_jitter else None
        self.views = views
        self.resample = (PIL_INTERPOLATIONS[views.interpolation],
                         PIL_INTERPOLATIONS[views.target_interpolation])
        self.rest = _rest(pipeline)

    def __call__(self, path, timer=None):
        from mmengine import fileio
        tick = timer.tick if timer else (lambda stage: None)
        results = dict(img_path=path)
        data = fileio.get(path, backend_args=self.backend_args)
        tick('read bytes')
        with self.Image.open(io.BytesIO(data)) as img:
            img.load()
            array = self.pil_to_rgb(img)
        results['ori_shape'] = array.shape[:2]
        tick('decode')
        pil = self.Image.fromarray(array)
        tick('other (draws, checks, conversions)')
        if self.jitter is not None:
            pil = self.jitter(pil)
        tick('jitter')
        v = self.views
        if self.torch.rand(1).item() < v.flip_prob:
            pil = pil.transpose(self.Image.Transpose.FLIP_LEFT_RIGHT)
        top, left, h, w = self.T.RandomResizedCrop.get_params(pil, list(v.scale),
                                                              list(v.ratio))
        crop = pil.crop((left, top, left + w, top + h))
        results['img'] = self.np.array(crop.resize(v.img_size[::-1], self.resample[0]))
        results['target_img'] = self.np.array(
            crop.resize(v.target_size[::-1], self.resample[1]))
        results['img_shape'] = v.img_size
        tick('flip + crop + resize x2')
        for t, stage in self.rest:
            results = t(results)
            tick(stage)
        return results


def measure(args) -> dict:
    import cv2
    import numpy as np
    import torch
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pipeline = build_pipeline(args.config)
    paths = sorted(osp.join(args.image_dir, f) for f in os.listdir(args.image_dir)
                   if f.endswith('.jpg'))
    if args.impl == 'reference':
        ref = Reference(pipeline)
        ref.np = np
        run = ref
    else:
        def run(path, timer=None):
            if timer is None:
                results = dict(img_path=path)
                for t in pipeline:
                    results = t(results)
                return results
            return staged(pipeline, path, timer)

    def large(path):
        w, h = (int(v) for v in osp.splitext(path)[0].rsplit('_', 1)[1].split('x'))
        return max(w, h) > 500

    torch.manual_seed(0)
    np.random.seed(0)
    for p in paths:                       # warm-up: file cache, lazy imports, allocator
        run(p)
    timer = Timer()
    for _ in range(args.passes):
        for p in paths:
            timer.start()
            run(p, timer)
    n = args.passes * len(paths)
    stage_ms = {s: 1e3 * t / n for s, t in timer.totals.items()}
    per_image = {p: [] for p in paths}
    for _ in range(args.passes):
        for p in paths:
            t0 = time.process_time()
            run(p)
            per_image[p].append(time.process_time() - t0)
    groups = {'all': paths, 'imagenet_size': [p for p in paths if not large(p)],
              'large': [p for p in paths if large(p)]}
    out = {f'{s}_ms': v for s, v in stage_ms.items()}
    for name, group in groups.items():
        secs = sum(sum(per_image[p]) for p in group)
        out[f'img_per_s_{name}'] = (args.passes * len(group) / secs) if group else 0.0
    out['stages_ms'] = sum(stage_ms.values())
    return out


def staged(pipeline, path, timer):
    """One sample through the config's pipeline, the time of each stage into ``timer``.

    ``LoadImageRGB`` and ``BEiTMaskedViews`` are run step by step through their methods,
    as their ``transform`` runs them (tests/test_tools/test_benchmark_pipeline.py checks
    that the results are the same); any other transform is one stage."""
    results = dict(img_path=path)
    other = 'other (draws, checks, conversions)'
    for t in pipeline:
        name = type(t).__name__
        if name == 'LoadImageRGB' and hasattr(t, 'read'):
            data = t.read(path)
            timer.tick('read bytes')
            if t.lazy:
                from mmbeit.datasets.transforms.loading import EncodedImage
                results['img_encoded'] = encoded = EncodedImage(data, path)
                shape = encoded.shape
            else:
                results['img'] = img = t.decode(data, path)
                shape = img.shape[:2]
            results['img_shape'] = results['ori_shape'] = shape
            timer.tick('decode')
        elif name == 'BEiTMaskedViews' and hasattr(t, 'draw'):
            source = t.source(results)
            params = t.draw(*source.shape[:2])
            timer.tick(other)
            image, scale = t.decode(source, params)
            timer.tick('decode')
            region, stats = t.cut(image, scale, params)
            timer.tick('flip + crop + resize x2')
            region = t.jitter(region, stats, params)
            timer.tick('jitter')
            view, target = t.resize(region)
            timer.tick('flip + crop + resize x2')
            results = t.write(results, params, scale, view, target)
            timer.tick(other)
        else:                 # (also the two above in versions without these steps)
            results = t(results)
            timer.tick({'LoadImageRGB': 'decode', 'BEiTMaskedViews': 'flip + crop + resize x2'}
                       .get(name, 'pack' if name.startswith('Pack') else
                            'mask' if 'Mask' in name else other))
    return results


# ---------------------------------------------------------------------------- report

def report(args, med, n_images) -> str:
    a, b = med['reference'], med['config']
    lines = [f'BEiT pretraining data pipeline, {osp.relpath(args.config, ROOT)}, one CPU core, '
             f'{n_images} JPEGs x {args.passes} passes, median of {args.repeats} '
             'alternating runs', '',
             '| stage (ms / image) | reference (torchvision ops) | mmbeit (config) |',
             '|---|---|---|']
    for s in STAGES:
        lines.append(f'| {s} | {a[s + "_ms"]:.3f} | {b[s + "_ms"]:.3f} |')
    lines.append(f'| sum of the stages | {a["stages_ms"]:.3f} | {b["stages_ms"]:.3f} |')
    for key, label in (('all', 'all images'), ('imagenet_size', 'ImageNet-size images'),
                       ('large', 'large images (800 x 600, 1200 x 900)')):
        ra, rb = a[f'img_per_s_{key}'], b[f'img_per_s_{key}']
        if ra and rb:
            lines.append(f'| **img/s on one core**, {label} | {ra:.0f} | {rb:.0f} '
                         f'({rb / ra:.2f}x) |')
    ra, rb = a['img_per_s_all'], b['img_per_s_all']
    lines.append(f'| cores per GPU at {args.target:,} img/s (all images) | '
                 f'{args.target / ra:.1f} | {args.target / rb:.1f} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='a dataset config with a train_pipeline')
    parser.add_argument('--passes', type=int, default=3, help='timed passes over the images')
    parser.add_argument('--repeats', type=int, default=3, help='alternating rounds per impl')
    parser.add_argument('--target', type=int, default=2400,
                        help='images per second one GPU trains on (default 2400: BEiT v2-B '
                             'on one H200 in bf16)')
    parser.add_argument('--image-dir', help='folder for the generated JPEGs (kept; reused '
                                            'when they are there); default a temp folder')
    parser.add_argument('--smoke', action='store_true',
                        help='4 images, one pass, one round, in this process (for CI)')
    parser.add_argument('--json', metavar='FILE', help='also write the results as JSON')
    parser.add_argument('--impl', choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.config = osp.abspath(args.config)
    if not osp.isfile(args.config):
        parser.error(f'--config {args.config}: no such file')
    if min(args.passes, args.repeats, args.target) < 1:
        parser.error('--passes, --repeats and --target must be >= 1')
    if args.smoke:
        args.passes, args.repeats = 1, 1

    if args.impl:                                   # child process: one measurement
        print(json.dumps(measure(args)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        folder = osp.abspath(args.image_dir or tmp)
        if args.smoke:
            paths = write_images(folder, SMOKE_SIZES, max_photos=2)
        else:
            paths = write_images(folder)
        if args.smoke:          # in this process, one run each: quick, for CI
            results = {impl: [measure(argparse.Namespace(**{**vars(args), 'impl': impl,
                                                             'image_dir': folder}))]
                       for impl in IMPLS}
        else:
            argv = ['--config', args.config, '--passes', str(args.passes),
                    '--image-dir', folder]
            results = run_rounds(__file__, argv, IMPLS, args.repeats)
        keys = [s + '_ms' for s in STAGES] + ['stages_ms', 'img_per_s_all',
                                              'img_per_s_imagenet_size', 'img_per_s_large']
        med = medians(results, keys)
        print(report(args, med, len(paths)))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(config=args.config, images=len(paths), passes=args.passes,
                               median=med, runs=results), f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
