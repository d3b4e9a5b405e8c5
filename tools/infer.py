"""Run a trained model on one image:
``python tools/infer.py CONFIG CHECKPOINT IMAGE [--device cpu] [--out overlay.png]
[--topk 5] [--overwrite] [--cfg-options k=v ...]``.

The task follows the model: segmentors (mmseg ``EncoderDecoder``, anything with a
``decode_head``) print the fraction of pixels of each predicted class and, with
``--out``, write the overlay with a class legend as a PNG (an existing file is kept
unless ``--overwrite``); classifiers print the top-k classes with their scores.

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
    parser = argparse.ArgumentParser(description='Classify or segment one image with a '
                                                 'trained mmbeit model')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file of the whole model (.pth)')
    parser.add_argument('image', help='image file')
    parser.add_argument('--device', default='cpu', help="device, e.g. 'cpu' or 'cuda:0'")
    parser.add_argument('--out', help='segmentation: write the overlay with its legend to '
                        'this .png')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: how many classes to list (default 5)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing --out file')
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


def main(argv=None) -> int:
    args = parse_args(argv)
    for what, path in (('config', args.config), ('checkpoint', args.checkpoint),
                       ('image', args.image)):
        if not osp.isfile(path):
            sys.exit(f'infer.py: {what} file {path!r} does not exist')
    if args.topk < 1:
        sys.exit(f'infer.py: --topk must be >= 1, got {args.topk}')
    if args.out is not None:
        if not args.out.lower().endswith('.png'):
            sys.exit(f'infer.py: --out must name a .png file, got {args.out!r}')
        if osp.exists(args.out) and not args.overwrite:
            sys.exit(f'infer.py: {args.out!r} already exists; pass --overwrite to replace '
                     f'it, or choose another --out')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit(f'infer.py: --device {args.device} but this machine has no CUDA GPU; use '
                 f'--device cpu')

    from mmbeit.apis import inference_classifier, inference_segmentor, init_model, model_task
    from mmbeit.engine.config_checks import UnknownConfigKeyError
    try:
        model = init_model(args.config, args.checkpoint, device=args.device,
                           cfg_options=args.cfg_options)
    except (FileNotFoundError, ValueError, UnknownConfigKeyError) as exc:
        # CheckpointError is a ValueError; UnknownConfigKeyError names a misspelt key
        sys.exit(f'infer.py: {exc}')
    classes = model.dataset_meta.get('classes')
    task = model_task(model)
    print(f'image: {args.image}')
    print(f'model: {type(model).__name__} ({task}), checkpoint {args.checkpoint}')

    if task == 'classification':
        if args.out is not None:
            sys.exit('infer.py: --out writes a segmentation overlay, but this config is a '
                     'classifier; drop --out')
        result = inference_classifier(model, args.image)
        print(f'prediction: {_name(classes, result["pred_label"])} '
              f'(score {result["pred_score"]:.4f})')
        print(classification_report(result, classes, args.topk))
        return 0

    seg = inference_segmentor(model, args.image)
    print(f'segmentation map: {seg.shape[0]} x {seg.shape[1]} px')
    print(segmentation_report(seg, classes))
    if args.out is not None:
        from mmbeit.visualization import save_seg_overlay
        palette = model.dataset_meta.get('palette')
        if palette is not None and len(palette) <= int(seg.max()):
            palette = None  # too short for these ids: use seg_palette
        save_seg_overlay(args.image, seg, args.out, classes=classes,
                         palette=np.asarray(palette, np.uint8) if palette is not None else None,
                         overwrite=args.overwrite)
        print(f'overlay written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
