"""Fit the codebook of a HOG tokenizer on the pretraining views of a config.

CONFIG is a pretraining config whose ``model.target_generator`` is a ``HOGTokenizer``
(e.g. ``configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py``). The tool builds
the config's train dataset with its own pipeline, so the tokenizer views it sees are
the ones pretraining will tokenize (same random crops, flips and colour jitter); draws
``--views`` of them per image (a progress line with images/s on stderr); computes the
centred HOG of every patch; fits the codebook (spherical k-means over the textured
patches, ``HOGTokenizer.fit``); prints how the tokens are used on those views; and writes
``--out``: the codebook and the settings it was fitted with, which the tokenizer checks
when it loads the file.

Usage::

    python tools/misc/fit_hog_tokenizer.py CONFIG --out work_dirs/hog_tokens.pth
    python tools/train.py CONFIG \
        --cfg-options model.target_generator.checkpoint=work_dirs/hog_tokens.pth

An existing ``--out`` is kept unless ``--force`` is given; the file is written by
``mmbeit.checkpoint.save_checkpoint`` (a temporary name next to it, moved into place at
the end), so an interrupted run leaves nothing.
"""
import argparse
import os.path as osp
import random
import sys

import numpy as np
import torch


def parse_args(argv=None):
    from mmbeit.engine.config_checks import CfgOptionsAction
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', help='pretraining config with a HOGTokenizer target generator')
    p.add_argument('--out', required=True, help='codebook file to write (.pth)')
    p.add_argument('--views', type=int, default=4,
                   help='random pretraining views drawn per image (default 4)')
    p.add_argument('--iters', type=int, default=30, help='k-means iterations (default 30)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--force', action='store_true', help='replace an existing --out')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                   help='override config settings, as in tools/train.py')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmbeit.datasets  # noqa: F401 (registers)
    import mmbeit.models  # noqa: F401
    from mmbeit.checkpoint import save_checkpoint
    from mmbeit.datasets import SeededDataset
    from mmbeit.registry import DATASETS, MODELS

    if osp.exists(args.out) and not args.force:
        sys.exit(f'[fit_hog_tokenizer] {args.out} exists; keeping it (pass --force to '
                 'replace it)')
    if args.views < 1:
        sys.exit(f'[fit_hog_tokenizer] --views {args.views}: draw at least one view per '
                 'image')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    tg_cfg = (cfg.get('model') or {}).get('target_generator')
    if not tg_cfg or tg_cfg.get('type') not in ('HOGTokenizer', 'mmbeit.HOGTokenizer'):
        kind = tg_cfg.get('type') if tg_cfg else None
        sys.exit(f'[fit_hog_tokenizer] {args.config}: model.target_generator is {kind!r}, '
                 'not a HOGTokenizer; this tool fits HOG codebooks only (a VQ-KD is trained '
                 'with tools/train.py on a configs/vqkd/ config)')
    init_default_scope(cfg.get('default_scope', 'mmbeit'))
    tg_cfg = dict(tg_cfg)
    tg_cfg['checkpoint'] = None
    tokenizer = MODELS.build(tg_cfg)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    if isinstance(dataset, SeededDataset):  # views drawn here from the seeds set above
        dataset = dataset.dataset
    from mmbeit.engine.progress import ProgressBar
    descs = []
    # on stderr; one item is one image through the pretraining pipeline (a view)
    with ProgressBar(args.views * len(dataset),
                     f'[fit_hog_tokenizer] {len(dataset)} images x {args.views} views') as bar:
        for _ in range(args.views):
            for i in range(len(dataset)):
                view = dataset[i]['inputs'][1]                   # the tokenizer view, uint8
                descs.append(tokenizer.descriptors(view[None].float() / 255.)[0])
                bar.update()
    desc = torch.cat(descs)
    try:
        stats = tokenizer.fit(desc, iters=args.iters,
                              generator=torch.Generator().manual_seed(args.seed))
    except ValueError as exc:
        sys.exit(f'[fit_hog_tokenizer] {exc}')
    print(f'[fit_hog_tokenizer] {len(dataset)} images x {args.views} views = '
          f'{len(descs)} views, {desc.shape[0]} patches; flat (token 0): '
          f'{100 * stats["flat_fraction"]:.1f}%; tokens used {round(stats["usage"] * 100)}% '
          f'of {tokenizer.vocab_size}, perplexity {stats["perplexity"]:.1f}')

    meta = dict(hog_tokenizer=tokenizer.hparams(), config=args.config, images=len(dataset),
                views=args.views, seed=args.seed, iters=args.iters,
                stats={k: float(v) for k, v in stats.items()})
    save_checkpoint(dict(state_dict=dict(codebook=tokenizer.codebook.clone()), meta=meta),
                    args.out)
    print(f'[fit_hog_tokenizer] wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
