"""Run a trained model on one image or on every image of a folder:
``python tools/infer.py CONFIG CHECKPOINT IMAGE|FOLDER [--device cpu] [--out overlay.png|DIR]
[--topk 5] [--score-thr 0.3] [--overwrite] [--cfg-options k=v ...]``.

The task follows the model: segmentors (mmseg ``EncoderDecoder``, anything with a
``decode_head``) print the fraction of pixels of each predicted class and, with
``--out``, write the overlay with a class legend as a PNG (an existing file is kept
unless ``--overwrite``); detectors (mmdet ``MaskRCNN``, ``FasterRCNN``, ...) print one line
per detection scoring at least ``--score-thr`` (class, score, box x1 y1 x2 y2 in pixels
of the image) and, with ``--out``, write the image with those detections drawn (masks,
boxes, "class score" tags; ``mmbeit.visualization.save_det_overlay``); classifiers print
the top-k classes with their scores.

Given a folder, every image under it (recursively; .jpg .jpeg .png .webp .bmp, hidden
files skipped, sorted by path) gets the same report, one after the other, each starting
with its ``image:`` line; ``--out`` is then a folder and each overlay is written there
under the image's relative path with ``.png`` (``a/b.jpg`` -> ``OUT/a/b.png``), each file
atomically. Existing overlays are reported before the model is built. A progress line
(images done, images/s, time left) goes to stderr, the reports to stdout.

The image goes through the config's test pipeline (``test_dataloader.dataset.pipeline``)
as in ``tools/test.py``; the checkpoint is read weights-only and loaded strictly (see
``mmbeit/apis/inference.py``).
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional, Sequence

import numpy as np
import torch


def parse_args(argv=None):
    from mmbeit.engine.config_checks import CfgOptionsAction
    parser = argparse.ArgumentParser(description='Classify, segment or detect objects in one '
                                                 'image, or every image of a folder, with a '
                                                 'trained mmbeit model')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file of the whole model (.pth)')
    parser.add_argument('image', help='image file, or a folder: every image under it '
                        '(recursively)')
    parser.add_argument('--device', default='cpu', help="device, e.g. 'cpu' or 'cuda:0'")
    parser.add_argument('--out', help='segmentation: write the overlay with its legend to '
                        'this .png; detection: the image with its detections drawn; with a '
                        'folder of images, a folder that gets one <image name>.png per image')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: how many classes to list (default 5)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: list and draw detections scoring at least this '
                        '(default 0.3)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace existing --out files')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction,
                        help='override config entries, e.g. '
                        'test_dataloader.dataset.metainfo.classes=classes.txt')
    return parser.parse_args(argv)


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    def line(cells):
        return '  '.join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return '\n'.join([line(header), line(['-' * w for w in widths])] + [line(r) for r in rows])


def _name(classes: Optional[Sequence[str]], k: int) -> str:
    return str(classes[k]) if classes is not None and 0 <= k < len(classes) else f'class {k}'


def classification_report(result: dict, classes: Optional[Sequence[str]], topk: int) -> str:
    scores = result['pred_scores']
    order = np.argsort(-scores, kind='stable')[:max(1, min(topk, len(scores)))]
    rows = [(str(r + 1), _name(classes, int(k)), f'{scores[k]:.4f}')
            for r, k in enumerate(order)]
    return _table(('rank', 'class', 'score'), rows)


def segmentation_report(seg: np.ndarray, classes: Optional[Sequence[str]]) -> str:
    ids, counts = np.unique(seg, return_counts=True)
    order = np.argsort(-counts, kind='stable')
    total = seg.size
    rows = [(str(int(ids[i])), _name(classes, int(ids[i])), str(int(counts[i])),
             f'{100.0 * counts[i] / total:.2f}%') for i in order]
    return _table(('id', 'class', 'pixels', 'fraction'), rows)


def detection_report(dets: dict, classes: Optional[Sequence[str]], score_thr: float) -> str:
    """One line per detection scoring at least ``score_thr``, highest score first: rank,
    class, score and box ``x1 y1 x2 y2`` (pixels of the image, one decimal)."""
    keep = np.flatnonzero(dets['scores'] >= score_thr)
    keep = keep[np.argsort(-dets['scores'][keep], kind='stable')]
    rows = [(str(r + 1), _name(classes, int(dets['labels'][i])), f'{dets["scores"][i]:.4f}',
             ' '.join(f'{v:.1f}' for v in dets['boxes'][i].tolist()))
            for r, i in enumerate(keep)]
    head = (f'detections: {len(keep)} with score >= {score_thr:g} (of {len(dets["scores"])} '
            f'the model kept)')
    if not rows:
        return head
    return head + '\n' + _table(('rank', 'class', 'score', 'box (x1 y1 x2 y2)'), rows)


def list_folder(folder: str) -> List[str]:
    """The images under ``folder`` (recursively, hidden files skipped), as paths relative
    to it, sorted; the same rule as the pretraining folders (``list_images``)."""
    from mmbeit.datasets.unlabeled_folder import IMG_EXTENSIONS, list_images
    found = list_images(folder)
    if not found:
        sys.exit(f'infer.py: no images ({" ".join(IMG_EXTENSIONS)}) under the folder '
                 f'{folder!r}')
    return found


def folder_outputs(out_dir: str, rel_paths: Sequence[str]) -> List[str]:
    """One overlay per image: ``OUT_DIR/<path relative to the folder, .png>``. Two images
    that would write the same file (``a.jpg`` and ``a.png``) are refused."""
    if out_dir.lower().endswith('.png') or osp.isfile(out_dir):
        sys.exit(f'infer.py: with a folder of images, --out names a folder for the overlays '
                 f'(one PNG per image, named after it), got {out_dir!r}')
    outs, seen = [], {}
    for rel in rel_paths:
        out = osp.join(out_dir, osp.splitext(rel)[0] + '.png')
        if out in seen:
            sys.exit(f'infer.py: {seen[out]!r} and {rel!r} would both write {out!r}; rename '
                     f'one of them or run the tool on each separately')
        seen[out] = rel
        outs.append(out)
    return outs


def _palette(model, ids: np.ndarray) -> Optional[np.ndarray]:
    """The dataset's palette (``dataset_meta['palette']``) when it has a colour for every
    class name and every id in ``ids``; otherwise None, and the overlay uses
    ``seg_palette``. (A class keeps its colour from image to image either way.)"""
    palette = model.dataset_meta.get('palette')
    classes = model.dataset_meta.get('classes')
    need = max(len(classes) if classes else 0, int(np.max(ids)) + 1 if np.size(ids) else 0)
    if palette is None or len(palette) < need:
        return None
    return np.asarray(palette, np.uint8)


def predict_one(model, task: str, image: str, out: Optional[str], classes, args,
                header: bool = True) -> None:
    """Print the report of one image (and write its overlay): the same for a single image
    and for each image of a folder (``header``: start with the ``image:`` line)."""
    from mmbeit.apis import inference_classifier, inference_detector, inference_segmentor
    if header:
        print(f'image: {image}')
    if task == 'classification':
        result = inference_classifier(model, image)
        print(f'prediction: {_name(classes, result["pred_label"])} '
              f'(score {result["pred_score"]:.4f})')
        print(classification_report(result, classes, args.topk))
        return
    if task == 'detection':
        dets = inference_detector(model, image)
        print(detection_report(dets, classes, args.score_thr))
        if out is not None:
            from mmbeit.visualization import save_det_overlay
            save_det_overlay(image, dets, out, classes=classes,
                             palette=_palette(model, dets['labels']),
                             score_thr=args.score_thr, overwrite=args.overwrite)
            print(f'overlay written to {out}')
        return
    seg = inference_segmentor(model, image)
    print(f'segmentation map: {seg.shape[0]} x {seg.shape[1]} px')
    print(segmentation_report(seg, classes))
    if out is not None:
        from mmbeit.visualization import save_seg_overlay
        save_seg_overlay(image, seg, out, classes=classes, palette=_palette(model, seg),
                         overwrite=args.overwrite)
        print(f'overlay written to {out}')


def main(argv=None) -> int:
    args = parse_args(argv)
    for what, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            sys.exit(f'infer.py: {what} file {path!r} does not exist')
    folder = osp.isdir(args.image)
    if not folder and not osp.isfile(args.image):
        sys.exit(f'infer.py: image file {args.image!r} does not exist (give an image file '
                 f'or a folder of images)')
    if args.topk < 1:
        sys.exit(f'infer.py: --topk must be >= 1, got {args.topk}')
    if not 0.0 <= args.score_thr <= 1.0:
        sys.exit(f'infer.py: --score-thr must be in [0, 1], got {args.score_thr}')
    if folder:
        rel_paths = list_folder(args.image)
        images = [osp.join(args.image, rel) for rel in rel_paths]
        outs = (folder_outputs(args.out, rel_paths) if args.out is not None
                else [None] * len(images))
    else:
        images, outs = [args.image], [args.out]
        if args.out is not None and not args.out.lower().endswith('.png'):
            sys.exit(f'infer.py: --out must name a .png file, got {args.out!r}')
    existing = [out for out in outs if out is not None and osp.exists(out)]
    if existing and not args.overwrite:
        more = f' and {len(existing) - 1} more' if len(existing) > 1 else ''
        sys.exit(f'infer.py: {existing[0]!r}{more} already exists; pass --overwrite to '
                 f'replace it, or choose another --out')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit(f'infer.py: --device {args.device} but this machine has no CUDA GPU; use '
                 f'--device cpu')

    from mmbeit.apis import init_model, model_task
    from mmbeit.engine.config_checks import UnknownConfigKeyError
    try:
        model = init_model(args.config, args.checkpoint, device=args.device,
                           cfg_options=args.cfg_options)
    except (FileNotFoundError, ValueError, UnknownConfigKeyError) as exc:
        # CheckpointError is a ValueError; UnknownConfigKeyError names a misspelt key
        sys.exit(f'infer.py: {exc}')
    classes = model.dataset_meta.get('classes')
    task = model_task(model)
    if task == 'classification' and args.out is not None:
        sys.exit('infer.py: --out writes a segmentation or detection overlay, but this '
                 'config is a classifier; drop --out')
    if folder:
        print(f'folder: {args.image} ({len(images)} images)')
    else:
        print(f'image: {args.image}')
    print(f'model: {type(model).__name__} ({task}), checkpoint {args.checkpoint}')
    if not folder:
        predict_one(model, task, args.image, args.out, classes, args, header=False)
        return 0

    from mmbeit.engine.progress import ProgressBar
    with ProgressBar(len(images), 'infer.py') as bar:  # on stderr; the reports on stdout
        for image, out in zip(images, outs):
            print()
            try:
                predict_one(model, task, image, out, classes, args)
            except Exception:
                print(f'infer.py: failed on {image}', file=sys.stderr)
                raise
            bar.update()
    return 0


if __name__ == '__main__':
    sys.exit(main())
