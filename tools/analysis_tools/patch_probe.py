"""Linear probe of a backbone's patch features on a segmentation dataset.

Answers "what do these patch features know about the classes of a segmentation task,
before any fine-tuning?", cheaply (seconds to minutes on a CPU for the demo data), so a
pretraining or a tokenizer can be judged before a segmentation run. For CONFIG, a
segmentation config with a ViT backbone (``model.backbone``, e.g. ``BEiTViT`` with
``out_type='featmap'``), it

1. builds the backbone with the weights of ``--checkpoint`` (the keys under ``--prefix``,
   ``backbone.`` by default: pretraining, classification and segmentation checkpoints all
   work; the backbone's load path adapts tables and raises on missing keys), or with its
   random initialisation (``--seed``) without ``--checkpoint``;
2. reads the images and annotations of the config's train and val datasets (mmseg's
   ``data_root`` + ``data_prefix`` layout, ``img_suffix`` / ``seg_map_suffix``,
   ``reduce_zero_label``), resizes each image to the backbone's ``img_size`` (bilinear;
   labels nearest) and normalises it with the config's ``data_preprocessor``;
3. labels every patch of the backbone's grid whose pixels are at least ``--purity`` one
   class (ignored pixels count as not that class); other patches are left out;
4. for every output map of the backbone (``out_indices``) and for their concatenation,
   standardises the features with the train patches' statistics and fits a class-balanced
   multinomial logistic regression (L-BFGS, L2 penalty ``--l2``) on the train patches
   (``mmbeit.evaluation.linear_probe``, the probe of knn_eval.py too);
5. prints, for the val patches, the accuracy per class and its mean over classes (the
   balanced accuracy; chance is 1 / classes), and writes the numbers to ``--out`` (JSON).

Example (the demo pretraining against a random initialisation)::

    python tools/analysis_tools/patch_probe.py \
        configs/demo/beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py
    python tools/analysis_tools/patch_probe.py \
        configs/demo/beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py \
        --checkpoint work_dirs/demo/latest/pretrain/epoch_150.pth
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmbeit.evaluation.linear_probe import fit_linear_probe

IGNORE = 255


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', help='segmentation config (model.backbone, data paths)')
    p.add_argument('--checkpoint', help='weights for the backbone; random init without')
    p.add_argument('--prefix', default='backbone.',
                   help="key prefix of the backbone in the checkpoint (default 'backbone.')")
    p.add_argument('--purity', type=float, default=0.75,
                   help='fraction of a patch that must be one class for it to be used')
    p.add_argument('--l2', type=float, default=1e-3, help='L2 penalty of the probe')
    p.add_argument('--max-iter', type=int, default=300, help='L-BFGS iterations')
    p.add_argument('--max-images', type=int, default=None,
                   help='use at most this many images of each split')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--seed', type=int, default=0, help='seed of a random initialisation')
    p.add_argument('--out', help='write the results as JSON to this file')
    args = p.parse_args(argv)
    if not 0 < args.purity <= 1:
        p.error(f'--purity {args.purity} must be in (0, 1]')
    return args


# ---------------------------------------------------------------------------------------
# pieces (imported by the tests)
# ---------------------------------------------------------------------------------------
def patch_labels(seg: torch.Tensor, patch_size: int, purity: float,
                 num_classes: int) -> torch.Tensor:
    """Per-patch labels from label maps.

    seg: [B, H, W] long, classes 0..num_classes-1, ``IGNORE`` (255) for ignored pixels;
    H and W multiples of ``patch_size``. Returns [B, H / p, W / p] long: the class that
    covers at least ``purity`` of the patch's pixels, or -1 where none does.
    """
    b, h, w = seg.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f'label maps {h}x{w} are not divisible by patch_size={patch_size}')
    valid = seg < num_classes
    onehot = F.one_hot(torch.where(valid, seg, 0), num_classes) * valid[..., None]
    frac = F.avg_pool2d(onehot.permute(0, 3, 1, 2).float(), patch_size)  # [B, K, h, w]
    best, cls = frac.max(1)
    return torch.where(best >= purity - 1e-6, cls, torch.full_like(cls, -1))


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3,
              max_iter: int = 300) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                            torch.Tensor]:
    """Class-balanced multinomial logistic regression on x [M, C], y [M] (0..K-1): the
    shared probe of :mod:`mmbeit.evaluation.linear_probe` with ``balanced=True`` (every
    present class weighs the same in the loss, whatever its count).

    Returns (weight [K, C], bias [K], mean [C], std [C]) (the features' train statistics,
    to apply to other features).
    """
    p = fit_linear_probe(x, y, num_classes, l2=l2, max_iter=max_iter, balanced=True)
    return p.weight, p.bias, p.mean, p.std


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> List[float]:
    """Accuracy (%) of pred among the samples of each class; NaN for absent classes."""
    out = []
    for k in range(num_classes):
        sel = y == k
        out.append(float((pred[sel] == k).double().mean() * 100) if sel.any() else
                   float('nan'))
    return out


def probe(train: Tuple[Sequence[torch.Tensor], torch.Tensor],
          val: Tuple[Sequence[torch.Tensor], torch.Tensor], names: Sequence[str],
          num_classes: int, l2: float, max_iter: int) -> Dict[str, Dict]:
    """One probe per feature set (and one on all of them concatenated).

    train / val: (list of feature tensors [M, C_i], one per set; labels [M])."""
    results = {}
    sets = list(zip(names, zip(train[0], val[0])))
    if len(sets) > 1:
        sets.append(('all', (torch.cat(list(train[0]), 1), torch.cat(list(val[0]), 1))))
    for name, (xt, xv) in sets:
        w, b, mean, std = fit_probe(xt, train[1], num_classes, l2, max_iter)
        pred = (((xv.double() - mean) / std) @ w.t() + b).argmax(1)
        acc = per_class_accuracy(pred, val[1], num_classes)
        present = [a for a in acc if a == a]
        results[name] = dict(per_class=acc, mean=float(np.mean(present)))
    return results


# ---------------------------------------------------------------------------------------
# data and model from the config
# ---------------------------------------------------------------------------------------
def _dataset_files(ds_cfg, split: str, max_images=None) -> List[Tuple[str, str]]:
    root = ds_cfg.get('data_root', '')
    prefix = ds_cfg.get('data_prefix', {})
    img_dir = osp.join(root, prefix.get('img_path', ''))
    seg_dir = osp.join(root, prefix.get('seg_map_path', ''))
    img_suffix = ds_cfg.get('img_suffix', '.jpg')
    seg_suffix = ds_cfg.get('seg_map_suffix', '.png')
    if not osp.isdir(img_dir):
        raise FileNotFoundError(f'patch_probe: the {split} image folder {img_dir} of the '
                                'config does not exist; write the data (the demo: python '
                                'tools/misc/make_demo_data.py) or fix data_root / data_prefix')
    pairs = []
    for name in sorted(os.listdir(img_dir)):
        if not name.endswith(img_suffix):
            continue
        seg = osp.join(seg_dir, name[:-len(img_suffix)] + seg_suffix)
        if not osp.isfile(seg):
            raise FileNotFoundError(f'patch_probe: {osp.join(img_dir, name)} has no label '
                                    f'map {seg}')
        pairs.append((osp.join(img_dir, name), seg))
    if not pairs:
        raise FileNotFoundError(f'patch_probe: no *{img_suffix} images in {img_dir}')
    return pairs[:max_images]


def _load(pairs, size: Tuple[int, int], mean, std, reduce_zero_label: bool):
    imgs, segs = [], []
    for img_path, seg_path in pairs:
        img = Image.open(img_path).convert('RGB').resize(size[::-1], Image.BILINEAR)
        seg = np.array(Image.open(seg_path).resize(size[::-1], Image.NEAREST), np.int64)
        if reduce_zero_label:
            seg = np.where(seg == 0, IGNORE, seg - 1)
        imgs.append(torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1))
        segs.append(torch.from_numpy(seg))
    x = torch.stack(imgs)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x, torch.stack(segs)


def build_backbone(cfg, checkpoint=None, prefix='backbone.', seed=0):
    from mmengine.registry import init_default_scope

    from mmbeit.registry import MODELS
    init_default_scope('mmbeit')
    bb = dict(cfg.model.backbone)
    bb['type'] = bb['type'].split('.')[-1]
    bb['out_type'] = 'featmap'
    bb['drop_path_rate'] = 0.
    bb['init_cfg'] = (dict(type='Pretrained', checkpoint=checkpoint, prefix=prefix)
                      if checkpoint else None)
    torch.manual_seed(seed)
    model = MODELS.build(bb)
    model.init_weights()
    return model.eval()


@torch.no_grad()
def _features(model, x: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    outs = None
    for i in range(0, len(x), batch_size):
        maps = model(x[i:i + batch_size])
        maps = [m.permute(0, 2, 3, 1).float() for m in maps]  # [B, h, w, C]
        outs = [[m] for m in maps] if outs is None else [o + [m] for o, m in zip(outs, maps)]
    return [torch.cat(o) for o in outs]


def run(args) -> Dict:
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if 'backbone' not in cfg.get('model', {}):
        raise ValueError(f'patch_probe: {args.config} has no model.backbone; give a '
                         'segmentation config')
    model = build_backbone(cfg, args.checkpoint, args.prefix, args.seed)
    if not hasattr(model, 'img_size'):
        raise ValueError(f'patch_probe: the backbone {type(model).__name__} has no img_size; '
                         'give a config whose backbone is a ViT built for one input size')
    size = tuple(model.img_size)
    patch = model.patch_size if isinstance(model.patch_size, int) else model.patch_size[0]
    pre = cfg.model.get('data_preprocessor', {})
    mean = pre.get('mean', [0., 0., 0.])
    std = pre.get('std', [1., 1., 1.])
    # Images are read as RGB; a preprocessor without bgr_to_rgb has its mean / std in
    # BGR order.
    if not pre.get('bgr_to_rgb', False):
        mean, std = mean[::-1], std[::-1]
    classes = cfg.train_dataloader.dataset.get('metainfo', {}).get('classes')
    if not classes:
        raise ValueError(f'patch_probe: {args.config} names no classes '
                         '(train_dataloader.dataset.metainfo.classes)')
    num_classes = len(classes)
    split_data = {}
    for split, loader in (('train', cfg.train_dataloader), ('val', cfg.val_dataloader)):
        ds = loader.dataset
        pairs = _dataset_files(ds, split, args.max_images)
        x, seg = _load(pairs, size, mean, std, ds.get('reduce_zero_label', False))
        labels = patch_labels(seg, patch, args.purity, num_classes).flatten()
        keep = labels >= 0
        feats = [f.reshape(-1, f.shape[-1])[keep] for f in _features(model, x,
                                                                      args.batch_size)]
        split_data[split] = (feats, labels[keep])
    names = [f'block {i}' for i in model.out_indices]
    res = probe(split_data['train'], split_data['val'], names, num_classes, args.l2,
                args.max_iter)
    counts = {s: torch.bincount(d[1], minlength=num_classes).tolist()
              for s, d in split_data.items()}
    return dict(config=args.config, checkpoint=args.checkpoint, classes=list(classes),
                patches=counts, results=res)


def format_table(out: Dict) -> str:
    classes = out['classes']
    head = '| features | ' + ' | '.join(classes) + ' | mean |'
    lines = [head, '|' + '---|' * (len(classes) + 2)]
    for name, r in out['results'].items():
        cells = ['-' if a != a else f'{a:.1f}' for a in r['per_class']]
        lines.append(f'| {name} | ' + ' | '.join(cells) + f" | {r['mean']:.1f} |")
    lines.append('| val patches | ' + ' | '.join(str(c) for c in out['patches']['val']) +
                 ' | |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    try:
        out = run(args)
    except (FileNotFoundError, ValueError) as exc:
        # a bad path or config: the message says which and how to fix it
        sys.exit(str(exc))
    src = args.checkpoint or f'random init (seed {args.seed})'
    print(f'patch probe of {src}: val accuracy (%) per class, class-balanced linear probe '
          f'on patches >= {args.purity:.0%} one class')
    print(format_table(out))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
