"""Look at what a BEiT / BEiT v2 pretraining checkpoint does with images: one PNG per image
with the input view, the mask, the masked input, the target tokens, the predicted tokens
at the masked positions (right / wrong, the masked-token accuracy), the DALL-E decoder's
reconstructions (BEiT v1 with the decoder built) and the cls token's attention maps.

``python tools/analysis_tools/visualize_mim.py CONFIG CHECKPOINT IMAGE|FOLDER... --out DIR
[--seed 0] [--layers -1 ...] [--heads H ...] [--device cpu] [--force]
[--cfg-options KEY=VALUE ...]``

* CONFIG is the pretraining config (``model.type='BEiT'``) and CHECKPOINT a checkpoint of
  it, loaded strictly through ``mmbeit.apis.init_model``. A pretraining checkpoint holds
  no tokenizer weights: the tokenizer loads its own file named by the config (VQ-KD
  ``checkpoint``, DALL-E ``encoder_checkpoint``, the HOG codebook ``checkpoint``); set it
  with ``--cfg-options`` where the config leaves it empty. For the DALL-E reconstruction
  panels build the decoder too: ``--cfg-options model.target_generator.with_decoder=True
  model.target_generator.decoder_checkpoint=data/pretrained/dall_e/dalle_decoder.pth``.
* Images: files and folders (every image under a folder, recursively: .jpg .jpeg .png
  .webp .bmp, hidden files skipped), any size and aspect ratio. Each is reduced to its
  largest centred box with the view's aspect ratio and resized with the config's own
  ``BEiTMaskedViews`` filters (no jitter, no flip): the same image always gives the same
  views. ``DIR/<name>.png`` for a file, ``DIR/<path under the folder>.png`` for a folder's
  images; existing pictures are kept unless ``--force``.
* The mask is one draw of the config's mask generator after ``np.random.seed(--seed)``:
  the same mask for every image, so pictures compare.
* Attention: the cls token's attention to the patches on the unmasked view, in the blocks
  of ``--layers`` (0-based, negative from the end; default the last), averaged over
  ``--heads`` (default all).

Prints one row per image (masked patches, right predictions, accuracy) and the mean
accuracy, and writes them to ``DIR/summary.json`` (rewritten by every run: config,
checkpoint, seed, and per image its path, picture, size, counts, accuracy and the panels
drawn); a progress line goes to stderr. The computation is
``mmbeit.visualization.mim_panels`` (tested), the drawing ``save_mim_panels``.

Example (the demo's pretraining run)::

    python tools/analysis_tools/visualize_mim.py \\
        configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py \\
        work_dirs/demo/latest/pretrain/epoch_150.pth data/demo/imagenet/val/class_0 \\
        --out work_dirs/demo/mim_vis --layers 1 -1 \\
        --cfg-options model.target_generator.checkpoint=work_dirs/demo/latest/hog_tokens.pth
"""
import argparse
import json
import math
import os.path as osp
import sys
from typing import List, Sequence, Tuple

TOOL = 'visualize_mim.py'


def parse_args(argv=None):
    from mmbeit.engine.config_checks import CfgOptionsAction
    p = argparse.ArgumentParser(description='Pictures of masked image modeling: views, mask, '
                                'target and predicted tokens, reconstructions, attention')
    p.add_argument('config', help='pretraining config (model.type=BEiT)')
    p.add_argument('checkpoint', help='pretraining checkpoint of that config (.pth)')
    p.add_argument('images', nargs='+', help='image files and/or folders (searched '
                   'recursively)')
    p.add_argument('--out', required=True, help='folder for the pictures (one PNG per image)')
    p.add_argument('--seed', type=int, default=0, help='numpy seed of the mask (default 0)')
    p.add_argument('--layers', type=int, nargs='+', default=[-1],
                   help='blocks whose cls attention is drawn, 0-based, negative from the end '
                   '(default: -1, the last)')
    p.add_argument('--heads', type=int, nargs='+', default=None,
                   help='attention heads to average (default: all)')
    p.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda', 'cuda:1', ...")
    p.add_argument('--force', action='store_true', help='replace existing pictures')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                   help='override config entries, e.g. '
                   'model.target_generator.checkpoint=hog_tokens.pth')
    return p.parse_args(argv)


def collect_images(sources: Sequence[str], out_dir: str) -> List[Tuple[str, str]]:
    """(image path, picture path) for every image of ``sources`` (files and folders)."""
    from mmbeit.datasets.unlabeled_folder import IMG_EXTENSIONS, list_images
    pairs, seen = [], {}
    for src in sources:
        if osp.isdir(src):
            found = list_images(src)
            if not found:
                sys.exit(f'{TOOL}: no images ({" ".join(IMG_EXTENSIONS)}) under the folder '
                         f'{src!r}')
            items = [(osp.join(src, rel), osp.splitext(rel)[0]) for rel in found]
        elif osp.isfile(src):
            items = [(src, osp.splitext(osp.basename(src))[0])]
        else:
            sys.exit(f'{TOOL}: image {src!r} does not exist (give image files or folders)')
        for path, name in items:
            out = osp.join(out_dir, name + '.png')
            if out in seen:
                sys.exit(f'{TOOL}: {seen[out]!r} and {path!r} would both write {out!r}; '
                         'rename one of them or run the tool on each separately')
            seen[out] = path
            pairs.append((path, out))
    return pairs


def read_config(args):
    """The config with --cfg-options merged; exits unless it is a pretraining config."""
    from mmengine.config import Config

    from mmbeit.visualization import find_pretraining_steps
    if not osp.isfile(args.config):
        sys.exit(f'{TOOL}: config file {args.config!r} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = cfg.get('model') or {}
    kind = str(model.get('type', '')).rsplit('.', 1)[-1]
    if kind != 'BEiT':
        sys.exit(f'{TOOL}: config {args.config!r} builds model.type={model.get("type")!r}, '
                 f"not a pretraining model (model.type='BEiT'): give the BEiT / BEiT v2 "
                 'pretraining config the checkpoint was trained with (configs/beit/, '
                 'configs/beitv2/, configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py)'
                 '; a fine-tuned model runs with tools/infer.py')
    try:
        find_pretraining_steps(cfg)
    except ValueError as exc:
        sys.exit(f'{TOOL}: {exc}')
    return cfg


def check_readable(paths: Sequence[str]) -> None:
    """Exit naming the first file that is not an image Pillow can identify (the header
    only; a truncated file is found when it is decoded)."""
    from PIL import Image
    for path in paths:
        try:
            with Image.open(path):
                pass
        except (OSError, SyntaxError, ValueError) as exc:
            reason = ('cannot identify the image format'
                      if isinstance(exc, Image.UnidentifiedImageError) else str(exc))
            sys.exit(f'{TOOL}: cannot read image {path}: {reason}')


def build_model(cfg, args):
    """init_model (strict load), then the tokenizer's own weights file."""
    from mmengine.logging import MMLogger

    from mmbeit.apis import init_model
    from mmbeit.checkpoint import CheckpointError
    from mmbeit.engine.config_checks import UnknownConfigKeyError
    try:
        model = init_model(cfg, args.checkpoint, device=args.device)
    except (FileNotFoundError, ValueError, UnknownConfigKeyError) as exc:
        sys.exit(f'{TOOL}: {exc}')  # CheckpointError is a ValueError
    tg = model.target_generator
    # mmengine reports every initialised tensor at INFO; keep the output to the table
    MMLogger.get_instance(TOOL, log_level='WARNING')
    # init_model loads the whole model from the checkpoint and skips init_weights; the
    # tokenizer is kept out of pretraining checkpoints and reads its own file there
    try:
        tg.init_weights()
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        sys.exit(f'{TOOL}: the tokenizer ({type(tg).__name__}) cannot load its weights: {exc}')
    tg.to(args.device)
    if getattr(tg, 'fitted', True) is False:
        sys.exit(f'{TOOL}: the HOG tokenizer has no codebook; pass --cfg-options '
                 'model.target_generator.checkpoint=HOG_TOKENS.pth (written by '
                 'tools/misc/fit_hog_tokenizer.py)')
    files = [getattr(tg, k, None) for k in ('checkpoint', 'encoder_checkpoint',
                                            'decoder_checkpoint')]
    if any(files):
        print(f'tokenizer: {type(tg).__name__} ({tg.vocab_size} codes), weights '
              f'{", ".join(f for f in files if f)}')
    else:
        print(f'{TOOL}: warning: {type(tg).__name__} has no weights file in the config '
              '(model.target_generator.checkpoint / encoder_checkpoint), so its tokens are '
              'those of random weights and the targets and accuracies mean nothing',
              file=sys.stderr)
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    pairs = collect_images(args.images, args.out)
    existing = [out for _, out in pairs if osp.exists(out)]
    if existing and not args.force:
        more = f' and {len(existing) - 1} more' if len(existing) > 1 else ''
        sys.exit(f'{TOOL}: {existing[0]!r}{more} already exists; pass --force to replace, '
                 'or choose another --out')
    cfg = read_config(args)
    check_readable([path for path, _ in pairs])
    import torch
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit(f'{TOOL}: --device {args.device} but this machine has no CUDA GPU; use '
                 '--device cpu')
    if not osp.isfile(args.checkpoint):
        sys.exit(f'{TOOL}: checkpoint file {args.checkpoint!r} does not exist')

    from mmbeit.checkpoint import atomic_output
    from mmbeit.datasets.transforms import LoadImageRGB
    from mmbeit.engine.progress import ProgressBar
    from mmbeit.visualization import (
        attention_indices,
        build_pretraining_steps,
        mim_panels,
        panel_names,
        save_mim_panels,
    )
    model = build_model(cfg, args)
    views, generator, _ = build_pretraining_steps(cfg)
    try:  # bad --layers / --heads fail before the first image is read
        attention_indices(model.backbone.num_layers, model.backbone.num_heads, args.layers,
                          args.heads)
    except ValueError as exc:
        sys.exit(f'{TOOL}: {exc}')
    print(f'model: {args.config} with {args.checkpoint}; views '
          f'{views.img_size[0]}x{views.img_size[1]} (backbone) and '
          f'{views.target_size[0]}x{views.target_size[1]} (tokenizer); mask seed {args.seed}')

    loader = LoadImageRGB()
    rows, records = [], []
    with ProgressBar(len(pairs), TOOL) as bar:   # on stderr; the table on stdout
        for path, out in pairs:
            try:
                image = loader.load(path)
            except OSError as exc:
                sys.exit(f'{TOOL}: {exc}')      # names the file
            panels = mim_panels(model, image, generator, views=views, seed=args.seed,
                                layers=args.layers, heads=args.heads)
            acc = panels['accuracy']
            title = (f'{osp.basename(path)} ({image.shape[1]}x{image.shape[0]}) | '
                     f'{osp.basename(args.checkpoint)} | masked-token accuracy '
                     f'{100 * acc:.1f}%')
            save_mim_panels(panels, out, title=title)
            rows.append((out, panels['num_masked'], int(panels['correct'].sum()), acc))
            records.append(dict(image=path, picture=out, size=[image.shape[1], image.shape[0]],
                                num_masked=rows[-1][1], right=rows[-1][2],
                                accuracy=None if math.isnan(acc) else acc,
                                panels=panel_names(panels)))
            bar.update()

    width = max(len(r[0]) for r in rows)
    print(f'{"picture":<{width}}  masked  right  accuracy')
    for out, masked, right, acc in rows:
        print(f'{out:<{width}}  {masked:>6}  {right:>5}  {100 * acc:>7.1f}%')
    accs = [r[3] for r in rows if not math.isnan(r[3])]
    mean = sum(accs) / len(accs) if accs else math.nan
    print(f'mean masked-token accuracy over {len(accs)} image(s): {100 * mean:.1f}%')
    summary = dict(config=args.config, checkpoint=args.checkpoint, seed=args.seed,
                   layers=args.layers, heads=args.heads,
                   mean_accuracy=None if math.isnan(mean) else mean, images=records)
    path = osp.join(args.out, 'summary.json')
    with atomic_output(path) as tmp, open(tmp, 'w') as f:
        json.dump(summary, f, indent=1)
    print(f'wrote {len(rows)} picture(s) and {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
