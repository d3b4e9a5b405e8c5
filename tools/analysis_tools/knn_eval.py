"""kNN accuracy and a quick linear probe of any BEiT checkpoint on a labelled image folder.

Answers "how good are this checkpoint's features?" without a config and without training:
embed the train images (the memory bank) and the val images (the queries) with the frozen
backbone, classify every val image by DINO's weighted kNN (cosine similarity, k nearest,
votes exp(similarity / T); Caron et al. 2021, section 4.1; the same code as the
KNNMonitorHook that watches pretraining, ``mmbeit.evaluation.knn``) and, with ``--probe``,
by a multinomial logistic regression fitted on the train features
(``mmbeit.evaluation.linear_probe``). One table row per block asked for (``--layers``), so
checkpoints and blocks can be compared side by side.

CHECKPOINT is any file ``mmbeit.checkpoint.read_state_dict`` reads:

* ours: a pretraining, classification or segmentation checkpoint (the backbone keys under
  ``backbone.``, found automatically; ``--prefix`` to choose another), or a bare backbone;
* another codebase's (unilm, timm, Hugging Face, mmpretrain, mmseg): give ``--src`` and it
  is converted in memory with ``mmbeit.converters.convert(..., kind='backbone')`` (the same
  as tools/model_converters/convert_checkpoint.py; nothing is written).

The backbone is built without a config: its ``BEiTViT`` settings are read off the state
dict (``mmbeit.models.backbones.arch_from_state_dict``: widths, depth, heads from the
relative position tables, patch and image size, norms), then the weights are loaded
strictly (``load_state_dict_checked``: nothing missing, nothing unexpected). A checkpoint
without relative position tables needs ``--num-heads``. With ``--config`` the backbone is
``model.backbone`` of that config and the normalisation its data preprocessor's.
``--random-init`` builds the same architecture with BEiT's initialisation instead of the
weights (seeded): the baseline a pretraining must beat.

DATA is an ImageNet-layout folder with ``train/`` and ``val/``, each with one subfolder of
images per class (or give ``--train DIR --val DIR``). The train classes, sorted by name,
define the label ids; a val class that is not a train class is an error. Every image: the
shorter side resized to img_size / 0.875 (bicubic), centre crop img_size, RGB, normalised
with ``--mean`` / ``--std`` (0-255 units; ImageNet's by default, as every BEiT / BEiT v2
config in configs/ uses; unilm's BEiT v1 ImageNet-22k recipe used 127.5 / 127.5).

Example (the demo pretraining against its random initialisation)::

    python tools/analysis_tools/knn_eval.py work_dirs/demo/latest/pretrain/epoch_150.pth \
        data/demo/imagenet --layers all --probe
    python tools/analysis_tools/knn_eval.py work_dirs/demo/latest/pretrain/epoch_150.pth \
        data/demo/imagenet --layers all --probe --random-init
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CROP_RATIO = 0.875  # img_size / resize size, the usual ImageNet evaluation crop


class KNNEvalError(ValueError):
    """A bad input of knn_eval.py (the message says which and how to fix it)."""


def _layers_arg(text: str):
    """'all' or comma-separated block indices (negative from the end)."""
    if text.strip().lower() == 'all':
        return 'all'
    try:
        values = [int(t) for t in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'all' or comma-separated block indices (e.g. -1 or 0,3,-1)"
        ) from None
    return values


def _three_floats(text: str) -> Tuple[float, float, float]:
    try:
        values = tuple(float(t) for t in text.split(','))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f'{text!r} is not 3 comma-separated numbers (R,G,B '
                                         'in 0-255 units)')
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a positive integer')
    return value


def parse_args(argv=None):
    from mmbeit.converters import SOURCES
    from mmbeit.evaluation import FEATURES
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='Normalisation: every BEiT / BEiT v2 pretraining and fine-tuning config in '
        'configs/ normalises with ImageNet\'s mean / std (the default here); unilm\'s BEiT v1 '
        'ImageNet-22k checkpoints were trained with --mean 127.5,127.5,127.5 --std '
        '127.5,127.5,127.5.')
    p.add_argument('checkpoint', help='weights: ours (pretraining / classifier / segmentor / '
                   'bare backbone) or, with --src, another codebase\'s')
    p.add_argument('data', nargs='?', help='ImageNet-layout folder with train/ and val/ '
                   '(class subfolders); or give --train and --val')
    p.add_argument('--train', help='train folder (class subfolders): the memory bank')
    p.add_argument('--val', help='val folder (class subfolders): the queries')
    p.add_argument('--config', help='take model.backbone and the data preprocessor\'s '
                   'normalisation from this config instead of inferring them')
    p.add_argument('--src', choices=SOURCES, help='convert the checkpoint in memory from this '
                   'layout (mmbeit.converters) first')
    p.add_argument('--prefix', help="key prefix of the backbone (default: 'backbone.' when "
                   'keys carry it, else none)')
    p.add_argument('--num-heads', type=_positive_int,
                   help='attention heads, for a checkpoint without relative position tables')
    p.add_argument('--img-size', type=_positive_int, help='evaluate at this size (default: '
                   'the checkpoint\'s; another one resizes its position tables)')
    p.add_argument('--random-init', action='store_true', help='the same architecture with '
                   'BEiT\'s random initialisation (--seed) instead of the weights')
    p.add_argument('--seed', type=int, default=0, help='seed of --random-init')
    p.add_argument('--layers', type=_layers_arg, default=[-1],
                   help="blocks to evaluate: 'all', or indices such as -1 (default) or 0,3,-1; "
                   'the last block gets the final norm when the backbone has one')
    p.add_argument('--feature', choices=FEATURES, default='cls',
                   help='cls token (default; DINO), mean of the patch tokens, or both '
                   'concatenated (BEiT\'s linear probe)')
    p.add_argument('--k', type=_positive_int, default=20, help='neighbours (default 20)')
    p.add_argument('--temperature', type=float, default=0.07,
                   help='weight exp(similarity / T) (default 0.07)')
    p.add_argument('--probe', action='store_true', help='also fit a linear probe per block')
    p.add_argument('--probe-l2', type=float, default=1e-3,
                   help='L2 penalty of the probe (default 1e-3)')
    p.add_argument('--probe-max-iter', type=_positive_int, default=300,
                   help='L-BFGS iterations of the probe (default 300)')
    p.add_argument('--balanced', action='store_true',
                   help='class-balanced probe loss (for unbalanced train folders)')
    p.add_argument('--batch-size', type=_positive_int, default=64)
    p.add_argument('--max-per-class', type=_positive_int,
                   help='use at most this many images of each class and split (sorted names)')
    p.add_argument('--mean', type=_three_floats, help='R,G,B mean, 0-255 units (default '
                   'ImageNet\'s 123.675,116.28,103.53, or the --config\'s)')
    p.add_argument('--std', type=_three_floats, help='R,G,B std, 0-255 units (default '
                   'ImageNet\'s 58.395,57.12,57.375, or the --config\'s)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out', help='write the numbers as JSON to this file')
    args = p.parse_args(argv)
    if args.data is None and not (args.train and args.val):
        p.error('give DATA (a folder with train/ and val/) or both --train and --val')
    if args.data is not None and (args.train or args.val):
        p.error('give either DATA or --train / --val, not both')
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        p.error(f'--temperature must be a number > 0, got {args.temperature}')
    if args.std is not None and min(args.std) <= 0:
        p.error(f'--std must be 3 positive numbers, got {args.std}')
    return args


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def _class_images(folder: str, max_per_class: Optional[int]) -> 'OrderedDict[str, List[str]]':
    if not osp.isdir(folder):
        raise KNNEvalError(f'{folder} is not a folder: give an ImageNet-layout DATA folder with '
                           'train/ and val/ (one subfolder of images per class), or --train '
                           'and --val')
    classes = sorted(d for d in os.listdir(folder)
                     if not d.startswith('.') and osp.isdir(osp.join(folder, d)))
    if not classes:
        raise KNNEvalError(f'{folder} has no class subfolders (expected {folder}/<class>/'
                           '<image>)')
    out = OrderedDict()
    for name in classes:
        root = osp.join(folder, name)
        # the pretraining folders' rule: recursive, any case, hidden entries skipped
        from mmbeit.datasets.unlabeled_folder import IMG_EXTENSIONS, list_images
        files = [osp.join(root, f) for f in list_images(root)]
        if not files:
            raise KNNEvalError(f'class folder {root} has no images '
                               f'({", ".join(IMG_EXTENSIONS)})')
        out[name] = files[:max_per_class]
    return out


def list_split_images(train_dir: str, val_dir: str, max_per_class: Optional[int] = None):
    """(classes, train files, train labels, val files, val labels); the train classes
    (sorted folder names) define the label ids."""
    train = _class_images(train_dir, max_per_class)
    val = _class_images(val_dir, max_per_class)
    unknown = [c for c in val if c not in train]
    if unknown:
        raise KNNEvalError(f'val class(es) {unknown} of {val_dir} are not classes of '
                           f'{train_dir}, whose class folders define the labels '
                           f'({list(train)}): add train images of them or remove them from '
                           'val')
    ids = {c: i for i, c in enumerate(train)}
    flat = [(f, ids[c]) for c, files in train.items() for f in files]
    flat_val = [(f, ids[c]) for c, files in val.items() for f in files]
    return (list(train), [f for f, _ in flat], [y for _, y in flat],
            [f for f, _ in flat_val], [y for _, y in flat_val])


def load_image(path: str, size: Tuple[int, int], mean, std, rgb: bool = True) -> torch.Tensor:
    """[3, H, W] float32: shorter side to floor(size / 0.875) (bicubic), centre crop,
    (pixel - mean) / std in 0-255 units; channels RGB (``rgb=False``: BGR, for a config
    whose model was trained on BGR input)."""
    h, w = size
    img = Image.open(path).convert('RGB')
    short = math.floor(min(h, w) / CROP_RATIO)
    iw, ih = img.size
    scale = short / min(iw, ih)
    new = (max(w, round(iw * scale)), max(h, round(ih * scale)))
    img = img.resize(new, Image.BICUBIC)
    left, top = (new[0] - w) // 2, (new[1] - h) // 2
    img = img.crop((left, top, left + w, top + h))
    x = torch.from_numpy(np.asarray(img, np.float32).copy()).permute(2, 0, 1)  # [3, H, W]
    if not rgb:
        x = x.flip(0)
    return (x - torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)) / \
        torch.tensor(std, dtype=torch.float32).view(3, 1, 1)


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------
def backbone_state_dict(args) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """The backbone's tensors (BEiTViT names), a description of where they came from, and
    notes on what was left out."""
    from mmbeit.checkpoint import read_state_dict, take_prefix
    sd = read_state_dict(args.checkpoint)
    notes = []
    if args.src:
        from mmbeit.converters import convert
        sd, report = convert(sd, args.src, kind='backbone')
        if report.dropped:
            notes.append(f'converted from --src {args.src}: {len(report.dropped)} source keys '
                         'left out (not backbone keys)')
        return sd, f'{args.checkpoint} (converted from {args.src})', notes
    prefix = args.prefix
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in sd) else ''
    if prefix:
        picked = take_prefix(sd, prefix)
        if not picked:
            raise KNNEvalError(f'{args.checkpoint}: no key starts with {prefix!r} (first keys: '
                               f'{list(sd)[:5]}): give the backbone\'s --prefix, or --src for '
                               'another codebase\'s layout')
        return picked, f'{args.checkpoint} (keys under {prefix!r})', notes
    picked = OrderedDict(sd)
    for group in ('lm_head', 'cls_pt_layers', 'head'):
        keys = [k for k in picked if k.split('.')[0] == group]
        for k in keys:
            del picked[k]
        if keys:
            notes.append(f'{group}.* ({len(keys)} keys) left out: not part of the backbone')
    return picked, f'{args.checkpoint} (a bare backbone)', notes


def _config_backbone(args):
    """BEiTViT kwargs from --config's model.backbone, and (mean, std, rgb)."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    model = cfg.get('model', {})
    bb = dict(model.get('backbone') or {})
    if str(bb.get('type', '')).split('.')[-1] != 'BEiTViT':
        raise KNNEvalError(f'{args.config}: model.backbone is {bb.get("type")!r}; knn_eval '
                           'builds BEiTViT backbones only (leave --config out to infer one '
                           'from the checkpoint)')
    bb.pop('type')
    bb.update(init_cfg=None, drop_path_rate=0., frozen_stages=-1, with_cp=False)
    if args.img_size:
        bb['img_size'] = args.img_size
    pre = dict(model.get('data_preprocessor') or {})
    is_mim = str(pre.get('type', '')).endswith('MIMDataPreprocessor')
    mean = pre.get('mean', IMAGENET_MEAN if is_mim else (0., 0., 0.))
    std = pre.get('std', IMAGENET_STD if is_mim else (1., 1., 1.))
    # mmbeit's pretraining pipelines read RGB; mmpretrain / mmseg preprocessors flip
    # mmcv's BGR images only with to_rgb / bgr_to_rgb (otherwise the model saw BGR)
    rgb = is_mim or bool(pre.get('to_rgb') or pre.get('bgr_to_rgb'))
    return bb, (tuple(mean), tuple(std), rgb)


def build_backbone(args):
    """(model in eval mode, settings dict, source text, notes, (mean, std, rgb))."""
    from mmbeit.checkpoint import load_state_dict_checked
    from mmbeit.models.backbones import BEiTViT, arch_from_state_dict
    sd, source, notes = backbone_state_dict(args)
    if args.config:
        kwargs, norm = _config_backbone(args)
    else:
        kwargs = arch_from_state_dict(sd, num_heads=args.num_heads, img_size=args.img_size)
        norm = (IMAGENET_MEAN, IMAGENET_STD, True)
    torch.manual_seed(args.seed)
    model = BEiTViT(**kwargs)
    if args.random_init:
        model.init_weights()  # BEiT's pretraining initialisation
        notes.append(f'random initialisation (seed {args.seed}); the checkpoint gave the '
                     'architecture only')
    else:
        fresh_ok, dropped = {}, []
        if args.config:
            # the parts a config's backbone may lack or not use (as BEiTViT.load_pretrained)
            for name, has in (('mask_token', model.mask_token is not None),
                              ('norm.', model.norm is not None),
                              ('fc_norm.', model.fc_norm is not None)):
                keys = [k for k in sd if k == name or (name.endswith('.') and
                                                       k.startswith(name))]
                if not has and keys:
                    sd = OrderedDict((k, v) for k, v in sd.items() if k not in keys)
                    dropped.append((name + ('*' if name.endswith('.') else ''),
                                    "the config's backbone has none"))
            fresh_ok['fc_norm.'] = 'pooling norm: the kNN features do not use it'
        report = load_state_dict_checked(
            model, sd, source=source, fresh_ok=fresh_ok, log=False,
            target=f'BEiTViT (arch {model.embed_dims}x{model.num_layers}, {model.num_heads} '
            f'heads, rel_pos_bias={model.rel_pos_mode!r})',
            hint='The backbone was built from the checkpoint\'s own shapes (or --config); '
            'a checkpoint of another codebase needs --src, one under another key prefix '
            '--prefix.')
        report.dropped[:0] = dropped
        notes.append(report.table())
    mean = args.mean or norm[0]
    std = args.std or norm[1]
    return model.eval(), kwargs, source, notes, (mean, std, norm[2])


def resolve_layers(layers, num_layers: int) -> List[int]:
    """--layers -> block indices 0..L-1 (order kept, duplicates dropped)."""
    if layers == 'all':
        return list(range(num_layers))
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise KNNEvalError(f'--layers {",".join(map(str, bad))}: out of range for a '
                           f'{num_layers}-block backbone; give indices from -{num_layers} to '
                           f'{num_layers - 1}, or all')
    out = []
    for i in layers:
        i = i % num_layers
        if i not in out:
            out.append(i)
    return out


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def embed(model, files: Sequence[str], layers: Sequence[int], feature: str, size, mean, std,
          rgb: bool, batch_size: int, device: str, desc: str) -> List[torch.Tensor]:
    """Features [len(files), D] of every image, one tensor per block in ``layers``."""
    from mmbeit.engine.progress import ProgressBar
    from mmbeit.evaluation import extract_features
    outs = [[] for _ in layers]
    with ProgressBar(len(files), desc) as bar:  # on stderr
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            x = torch.stack([load_image(f, size, mean, std, rgb) for f in chunk])
            for out, f in zip(outs, extract_features(model, x.to(device), feature, layers)):
                out.append(f.cpu())
            bar.update(len(chunk))
    return [torch.cat(o) for o in outs]


def evaluate(bank: Sequence[torch.Tensor], bank_labels: torch.Tensor,
             queries: Sequence[torch.Tensor], query_labels: torch.Tensor, layers: Sequence[int],
             num_classes: int, k: int, temperature: float, probe: bool, probe_l2: float,
             probe_max_iter: int, balanced: bool) -> List[Dict]:
    """One row per block: kNN top-1 / top-5 (%) and, with ``probe``, the probe's top-1."""
    from mmbeit.evaluation import fit_linear_probe, knn_scores, topk_correct
    rows = []
    q = len(query_labels)
    for layer, xb, xq in zip(layers, bank, queries):
        scores = knn_scores(xb, bank_labels, xq, num_classes, k=k, temperature=temperature)
        hits = topk_correct(scores, query_labels, (1, 5))
        row = dict(block=layer, knn_top1=100. * hits[1] / q, knn_top5=100. * hits[5] / q)
        if probe:
            lin = fit_linear_probe(xb, bank_labels, num_classes, l2=probe_l2,
                                   max_iter=probe_max_iter, balanced=balanced)
            row['probe_top1'] = 100. * float((lin.predict(xq) == query_labels).double().mean())
        rows.append(row)
    return rows


def format_table(out: Dict) -> str:
    """The Markdown table of a result (what is printed; ``out`` as written to --out)."""
    k, t = out['k'], out['temperature']
    head = f'| block | kNN top-1 (k={k}, T={t:g}) | kNN top-5 |'
    sep = '|---|---|---|'
    probe = any('probe_top1' in r for r in out['rows'])
    if probe:
        head += ' linear probe top-1 |'
        sep += '---|'
    lines = [head, sep]
    last = out['num_layers'] - 1
    for r in out['rows']:
        name = str(r['block']) + (' (last)' if r['block'] == last else '')
        line = f"| {name} | {r['knn_top1']:.1f} | {r['knn_top5']:.1f} |"
        if probe:
            line += f" {r['probe_top1']:.1f} |"
        lines.append(line)
    return '\n'.join(lines)


def run(args) -> Dict:
    if args.data is not None:
        train_dir, val_dir = osp.join(args.data, 'train'), osp.join(args.data, 'val')
    else:
        train_dir, val_dir = args.train, args.val
    classes, train_files, train_y, val_files, val_y = list_split_images(
        train_dir, val_dir, args.max_per_class)
    model, kwargs, source, notes, (mean, std, rgb) = build_backbone(args)
    model.to(args.device)
    layers = resolve_layers(args.layers, model.num_layers)
    size = tuple(model.img_size)
    for note in notes:
        print(f'knn_eval: {note}')
    start = time.monotonic()
    common = (layers, args.feature, size, mean, std, rgb, args.batch_size, args.device)
    bank = embed(model, train_files, *common, desc='knn_eval train')
    queries = embed(model, val_files, *common, desc='knn_eval val')
    embed_s = time.monotonic() - start
    rows = evaluate(bank, torch.tensor(train_y), queries, torch.tensor(val_y), layers,
                    len(classes), args.k, args.temperature, args.probe, args.probe_l2,
                    args.probe_max_iter, args.balanced)
    arch = dict(kwargs)
    return dict(
        checkpoint=args.checkpoint, source=source, src=args.src, config=args.config,
        random_init=args.random_init, seed=args.seed if args.random_init else None,
        backbone=arch, num_layers=model.num_layers, img_size=list(size),
        mean=list(mean), std=list(std), channels='RGB' if rgb else 'BGR',
        feature=args.feature, k=args.k, temperature=args.temperature,
        probe=dict(l2=args.probe_l2, max_iter=args.probe_max_iter, balanced=args.balanced)
        if args.probe else None,
        train=train_dir, val=val_dir, classes=classes, num_train=len(train_files),
        num_val=len(val_files), max_per_class=args.max_per_class,
        embed_seconds=round(embed_s, 2), rows=rows)


def _describe(out: Dict) -> str:
    from mmbeit.evaluation import FEATURE_NAMES
    bb = out['backbone']
    arch = bb.get('arch', {})
    if isinstance(arch, dict) and arch:
        arch = (f"{arch.get('embed_dims')}x{arch.get('num_layers')}, "
                f"{arch.get('num_heads')} heads")
    what = (f"random init (seed {out['seed']}) of the architecture of {out['checkpoint']}"
            if out['random_init'] else out['source'])
    size = 'x'.join(str(s) for s in out['img_size'])
    return (f"knn_eval: {what}\n  BEiTViT {arch}, patch {bb.get('patch_size')}, {size} px; "
            f"feature: {FEATURE_NAMES[out['feature']]}; {out['num_train']} train / "
            f"{out['num_val']} val images, {len(out['classes'])} classes; embedding took "
            f"{out['embed_seconds']:.1f} s")


def main(argv=None):
    args = parse_args(argv)
    try:
        out = run(args)
    except (FileNotFoundError, ValueError) as exc:
        # a bad path, checkpoint or option: the message names it and the fix
        msg = str(exc)
        sys.exit(msg if msg.startswith('knn_eval') else f'knn_eval: {msg}')
    print(_describe(out))
    print(format_table(out))
    if args.out:
        from mmbeit.checkpoint import atomic_output
        with atomic_output(args.out) as tmp, open(tmp, 'w') as f:
            json.dump(out, f, indent=1)
        print(f'knn_eval: wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
