"""Tokenize images with a visual tokenizer and report how the codebook is used.

Works with every mmbeit tokenizer (``VQKD``, ``DALLETokenizer``, ``HOGTokenizer``): CONFIG
is a tokenizer config (``configs/tokenizers/*.py``), a VQ-KD training config
(``configs/vqkd/*.py``; the teacher and decoder are not built) or any config whose
``model.target_generator`` is a tokenizer (for HOG tokens, ``--checkpoint`` is the
codebook of ``tools/misc/fit_hog_tokenizer.py``). Images are resized (short side,
bicubic) and centre-cropped to the tokenizer's input size, scaled to [0, 1] RGB, and
tokenized in eval mode.

Prints a table (images, tokens, codes used, usage, perplexity, the most frequent codes)
to stdout, a progress line (images done, images/s, time left) to stderr, and writes to
``--out-dir``:

- ``usage.json``: the numbers of the table and the count of every code;
- ``tokens.npy`` [num_images, N] (int64) and ``files.txt`` (one image path per row);
- ``reconstruction.png`` when the tokenizer can decode pixels (the DALL-E dVAE built with
  its decoder): original | reconstruction from the tokens, one row per image.

Example::

    python tools/analysis_tools/tokenize_images.py \
        configs/demo/vqkd_vit-tiny-p8_random-teacher_20e_demo-64.py data/demo/imagenet/val \
        --checkpoint work_dirs/vqkd_demo/epoch_20.pth --out-dir work_dirs/vqkd_demo/tokens
    python tools/analysis_tools/tokenize_images.py configs/tokenizers/dalle_dvae_openai.py \
        path/to/images --out-dir work_dirs/dalle_tokens
"""
import argparse
import io
import json
import os
import os.path as osp
import sys

import numpy as np
import torch
from PIL import Image

IMG_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
OUTPUTS = ('usage.json', 'tokens.npy', 'files.txt', 'reconstruction.png')


def parse_args(argv=None):
    from mmbeit.engine.config_checks import CfgOptionsAction
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', help='tokenizer, VQ-KD or pretraining config')
    p.add_argument('images', help='an image file, a folder (searched recursively) or a text '
                   'file with one image path per line')
    p.add_argument('--checkpoint', help='tokenizer weights: a VQ-KD checkpoint (official or '
                   'mmbeit), or the DALL-E encoder (dalle_encoder.pth; convert OpenAI\'s '
                   'encoder.pkl once with tools/model_converters/dalle_to_state_dict.py)')
    p.add_argument('--decoder-checkpoint', help='DALL-E decoder weights (dalle_decoder.pth, '
                   'converted from decoder.pkl), for reconstruction.png')
    p.add_argument('--out-dir', required=True, help='folder for the outputs')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--max-images', type=int, default=None, help='use at most this many')
    p.add_argument('--num-vis', type=int, default=8, help='rows of reconstruction.png')
    p.add_argument('--top', type=int, default=10, help='most frequent codes to list')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--force', action='store_true', help='overwrite existing outputs')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                   help='override config settings, e.g. model.quantizer.num_tokens=1024')
    return p.parse_args(argv)


def list_images(src: str) -> list:
    if osp.isdir(src):
        found = []
        for root, _, files in os.walk(src):
            found += [osp.join(root, f) for f in files if f.lower().endswith(IMG_EXTS)]
        files = sorted(found)
    elif src.lower().endswith(IMG_EXTS):
        files = [src]
    elif osp.isfile(src):
        with open(src) as f:
            files = [line.strip() for line in f if line.strip()]
    else:
        raise SystemExit(f'error: {src} is not an image, a folder or a list file')
    if not files:
        raise SystemExit(f'error: no images ({", ".join(IMG_EXTS)}) found under {src}')
    return files


def load_image(path: str, size) -> torch.Tensor:
    """RGB [3, H, W] in [0, 1]: short side resized to the input size, centre crop."""
    try:
        img = Image.open(path).convert('RGB')
    except OSError as e:
        raise SystemExit(f'error: cannot read image {path}: {e}') from None
    h, w = size
    scale = max(h / img.height, w / img.width)
    img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))),
                     Image.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    img = img.crop((left, top, left + w, top + h))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.).permute(2, 0, 1)


def build_tokenizer(args):
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import DefaultScope

    import mmbeit.models  # noqa: F401  (registers the tokenizers)
    from mmbeit.models.tokenizers import VQKD, DALLETokenizer, HOGTokenizer, load_dalle_weights
    from mmbeit.registry import MODELS

    # mmengine reports every initialised tensor at INFO; keep the output to the report.
    MMLogger.get_instance('tokenize_images', log_level='WARNING')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model_cfg = cfg.model
    if 'target_generator' in model_cfg:
        model_cfg = model_cfg.target_generator
    model_cfg = model_cfg.copy()
    if model_cfg.get('type') in ('VQKD', 'mmbeit.VQKD'):
        # Tokenizing needs the encoder and the codebook only.
        model_cfg.update(teacher=None, with_decoder=False)
    if model_cfg.get('type') in ('DALLETokenizer', 'mmbeit.DALLETokenizer'):
        if args.decoder_checkpoint:
            model_cfg.update(with_decoder=True, decoder_checkpoint=None)
        if args.checkpoint:
            model_cfg.update(encoder_checkpoint=None)
    if args.checkpoint and model_cfg.get('type') in ('HOGTokenizer', 'mmbeit.HOGTokenizer'):
        model_cfg.update(checkpoint=None)
    with DefaultScope.overwrite_default_scope('mmbeit'):
        tok = MODELS.build(model_cfg)
    if not isinstance(tok, (VQKD, DALLETokenizer, HOGTokenizer)):
        raise SystemExit(f'error: {args.config}: model type {model_cfg.get("type")!r} is not a '
                         'tokenizer (VQKD, DALLETokenizer or HOGTokenizer)')
    tok.init_weights()
    if args.checkpoint:
        if isinstance(tok, VQKD):
            tok.load_tokenizer(args.checkpoint)
        elif isinstance(tok, HOGTokenizer):
            tok.load_codebook(args.checkpoint)
        else:
            load_dalle_weights(args.checkpoint, 'encoder', module=tok.encoder)
    if args.decoder_checkpoint:
        if not isinstance(tok, DALLETokenizer):
            raise SystemExit('error: --decoder-checkpoint is for the DALL-E tokenizer only')
        load_dalle_weights(args.decoder_checkpoint, 'decoder', module=tok.decoder)
    print(f'tokenizer: {type(tok).__name__} from {args.config}'
          + (f', weights {args.checkpoint}' if args.checkpoint else ''))
    return tok.freeze().to(args.device)


def reconstruction_png(originals: torch.Tensor, recons: torch.Tensor) -> bytes:
    """Rows of original | reconstruction, 2 px white gaps, PNG bytes."""
    n, _, h, w = originals.shape
    gap = 2
    canvas = torch.ones(3, n * h + (n - 1) * gap, 2 * w + gap)
    for i in range(n):
        y = i * (h + gap)
        canvas[:, y:y + h, :w] = originals[i]
        canvas[:, y:y + h, w + gap:] = recons[i]
    arr = (canvas.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format='PNG')
    return buf.getvalue()


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`mmbeit.checkpoint.atomic_output`."""
    from mmbeit.checkpoint import atomic_output
    with atomic_output(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)


def main(argv=None) -> dict:
    args = parse_args(argv)
    existing = [f for f in OUTPUTS if osp.exists(osp.join(args.out_dir, f))]
    if existing and not args.force:
        raise SystemExit(f'error: {args.out_dir} already has {existing}; choose another '
                         '--out-dir or pass --force to overwrite')
    files = list_images(args.images)[:args.max_images]
    tok = build_tokenizer(args)
    size = tuple(tok.input_size) if not isinstance(tok.input_size, int) else (tok.input_size, ) * 2

    from mmbeit.engine.progress import ProgressBar
    tokens, vis_in = [], []
    with ProgressBar(len(files), 'tokenize_images') as bar:  # on stderr
        for start in range(0, len(files), args.batch_size):
            batch = torch.stack([load_image(f, size)
                                 for f in files[start:start + args.batch_size]])
            tokens.append(tok.tokenize(batch.to(args.device)).cpu())
            if sum(len(v) for v in vis_in) < args.num_vis:
                vis_in.append(batch)
            bar.update(len(batch))
    tokens = torch.cat(tokens)  # [num_images, N]

    from mmbeit.models.tokenizers import codebook_usage_stats
    counts = torch.bincount(tokens.flatten(), minlength=tok.vocab_size)
    stats = codebook_usage_stats(counts)
    per_image = [len(torch.unique(t)) for t in tokens]
    order = torch.argsort(counts, descending=True)[:args.top]
    top = [(int(i), int(counts[i]), float(counts[i]) / tokens.numel()) for i in order]
    report = dict(config=args.config, checkpoint=args.checkpoint, images=len(files),
                  tokens_per_image=tokens.shape[1], vocab_size=tok.vocab_size,
                  codes_used=tok.vocab_size - stats['unused'], usage=stats['usage'],
                  perplexity=stats['perplexity'],
                  mean_unique_codes_per_image=float(np.mean(per_image)),
                  top_codes=[dict(code=c, count=n, share=s) for c, n, s in top],
                  counts=counts.tolist())

    rows = [('images', f'{len(files)}'), ('tokens / image', f'{tokens.shape[1]}'),
            ('codes used', f'{report["codes_used"]} / {tok.vocab_size}'),
            ('usage', f'{100 * stats["usage"]:.1f}%'),
            ('perplexity', f'{stats["perplexity"]:.1f}'),
            ('unique codes / image', f'{report["mean_unique_codes_per_image"]:.1f}')]
    rows += [(f'top code {c}', f'{n} ({100 * s:.1f}%)') for c, n, s in top]
    width = max(len(k) for k, _ in rows)
    print('\n'.join(f'{k:<{width}}  {v}' for k, v in rows))

    os.makedirs(args.out_dir, exist_ok=True)
    write_atomic(osp.join(args.out_dir, 'usage.json'), json.dumps(report, indent=1).encode())
    buf = io.BytesIO()
    np.save(buf, tokens.numpy().astype(np.int64))
    write_atomic(osp.join(args.out_dir, 'tokens.npy'), buf.getvalue())
    write_atomic(osp.join(args.out_dir, 'files.txt'), ('\n'.join(files) + '\n').encode())
    if getattr(tok, 'decoder', None) is not None and hasattr(tok, 'decode') and \
            type(tok).__name__ == 'DALLETokenizer':
        originals = torch.cat(vis_in)[:args.num_vis]
        with torch.no_grad():
            recons = tok.decode(tokens[:len(originals)].to(args.device)).float().cpu()
        write_atomic(osp.join(args.out_dir, 'reconstruction.png'),
                     reconstruction_png(originals, recons))
        print(f'wrote {osp.join(args.out_dir, "reconstruction.png")}')
    print(f'wrote usage.json, tokens.npy and files.txt to {args.out_dir}')
    return report


if __name__ == '__main__':
    sys.exit(main() and 0)
