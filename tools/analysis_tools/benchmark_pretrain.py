"""Time full BEiT v2 pretraining iterations of mmbeit against mmpretrain's BEiT v2.

Both models follow their BEiT v2 300-epoch configs (ours:
``configs/beitv2/beitv2_vit-{base,large}_300e.py``; mmpretrain's:
``beitv2_beit-base-p16_8xb256-amp-coslr-300e_in1k.py``): a ViT with a mask token, shared
relative position bias, LayerScale (0.1 base, 1e-5 large) and no drop path; the 2-block
patch-aggregation neck on the early layer (9 of 12, 21 of 24); the 8192-way head shared by
both losses; a base-size VQ-KD tokenizer with 32-dim codes. The tokenizer keeps random
weights (no checkpoint is read; mmpretrain's codebook gets no k-means init, so it does not
run k-means every step). Both sides see the same random uint8 batch (two views).

One iteration, as the runner's ``train_step`` does it, on both sides:

- the data preprocessor (normalisation of both views) and the masks: both come from a
  pipeline transform in real training (ours ``MIMMask`` with ``BlockwiseMaskGenerator``,
  mmpretrain's ``BEiTMaskGenerator``), run in the dataloader workers; here both are run
  per sample inside the step, so the column shows their cost. Both mask exactly the same number of
  patches (75 of 196 at base), so both do the same work, but the masks themselves differ
  (different generators). The column ``mask ms`` is the time spent drawing them;
- the tokenizer forward (no grad), backbone, neck, head, both cross-entropy losses;
- backward, gradient clipping (max norm 3) and AdamW (lr 1.5e-3, betas (0.9, 0.98),
  weight decay 0.05, one parameter group) through mmengine's ``OptimWrapper``
  (``AmpOptimWrapper``, dynamic loss scale, for fp16 on CUDA).

``--dtype bf16|fp16`` runs the preprocessor and forward under ``torch.autocast``.
``--with-cp``: our backbone's ``with_cp``; mmpretrain's backbone has no such option, so
its blocks are wrapped here in the same ``torch.utils.checkpoint`` call.
``--compile [BACKEND]`` times both models under ``torch.compile`` (default backend
``inductor``; the data preprocessor and the optimizer step stay eager): the first step runs
eager, then ``--warmup`` compiled steps (compilation happens there) come before the timed ones;
on CUDA the peak memory is then that of the compiled steps.

FLOPs: the first step of every run (forward, backward and optimizer step) is counted with
``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix products,
convolutions and attention kernels (2 FLOPs per multiply-add; element-wise work such as
softmax, LayerNorm, GELU and AdamW is not counted). The table gives it per image, the
TFLOP/s it implies, and with ``--peak-tflops P`` the model FLOPs utilisation (MFU) against
that peak: e.g. 989 for an H100 / H200 SXM in dense bf16 (datasheet).

Each measurement is its own subprocess, the implementations alternate over ``--repeats``
rounds and the table gives medians: speed-up of mmbeit (mmpretrain's time / mmbeit's) and
mmbeit's peak memory as a fraction of mmpretrain's (see benchmark_common.py for how
memory is measured). On CPU the resident set also holds glibc's free-but-kept heap, which
can differ by ~10% between the two at equal live tensors; ``MALLOC_MMAP_THRESHOLD_=131072``
in the environment (children inherit it) makes it follow the live allocations, at some
cost in speed (docs/benchmarks.md). Every run prints its first step's losses: with random
weights both should be near ln(8192) = 9.01.

Example::

    python tools/analysis_tools/benchmark_pretrain.py --arch base --batch 4 --iters 3 \\
        --warmup 1 --repeats 3
    python tools/analysis_tools/benchmark_pretrain.py --device cuda --dtype bf16 --batch 128 \
        --iters 20 --warmup 5 --repeats 1 --compile --peak-tflops 989
"""
import argparse
import json
import math
import sys
import time
from typing import Optional

from benchmark_common import current_rss_kb, medians, peak_memory_mb, run_rounds

IMPLS = ('mmbeit', 'mmpretrain')
VOCAB = 8192
CODE_DIMS = 32
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]

# dims: the backbone (and neck) sizes; early: the neck's early layer (1-based); masked:
# patches masked per image; min_block: smallest masking rectangle (unilm: 16 at 14x14).
# ``tiny`` is for smoke tests only (its tokenizer is tiny as well).
_TINY = dict(embed_dims=64, num_layers=2, num_heads=2, feedforward_channels=256)
ARCHS = {
    'tiny': dict(dims=_TINY, img_size=32, patch_size=8, early=1, layer_scale=0.1,
                 masked=6, min_block=2, tokenizer=_TINY),
    'base': dict(dims=dict(embed_dims=768, num_layers=12, num_heads=12,
                           feedforward_channels=3072),
                 img_size=224, patch_size=16, early=9, layer_scale=0.1, masked=75,
                 min_block=16, tokenizer='base'),
    'large': dict(dims=dict(embed_dims=1024, num_layers=24, num_heads=16,
                            feedforward_channels=4096),
                  img_size=224, patch_size=16, early=21, layer_scale=1e-5, masked=75,
                  min_block=16, tokenizer='base'),
}


def _arch_arg(name: str):
    """What both backbones take as ``arch``: the preset name, or the dict for tiny."""
    return ARCHS[name]['dims'] if name == 'tiny' else name


def mmbeit_cfg(name: str, with_cp: bool) -> dict:
    a = ARCHS[name]
    d = a['dims']
    return dict(
        type='BEiT',
        data_preprocessor=dict(
            type='MIMDataPreprocessor', mean=MEAN, std=STD, patch_size=a['patch_size']),
        backbone=dict(
            type='BEiTViT', arch=_arch_arg(name), img_size=a['img_size'],
            patch_size=a['patch_size'], use_abs_pos_emb=False, rel_pos_bias='shared',
            layer_scale_init_value=a['layer_scale'], drop_path_rate=0., use_mask_token=True,
            final_norm=True, out_type='raw', with_cp=with_cp),
        neck=dict(type='BEiTV2Neck', early_layers=a['early'], num_layers=2,
                  embed_dims=d['embed_dims'], num_heads=d['num_heads'],
                  feedforward_channels=d['feedforward_channels'],
                  layer_scale_init_value=a['layer_scale'], drop_path_rate=0.,
                  backbone_layers=d['num_layers']),
        head=dict(type='MIMHead', in_channels=d['embed_dims'], vocab_size=VOCAB),
        target_generator=dict(
            type='VQKD', encoder=dict(arch=a['tokenizer'], img_size=a['img_size'],
                                      patch_size=a['patch_size']),
            quantizer=dict(num_tokens=VOCAB, embed_dims=CODE_DIMS, kmeans_init=False),
            with_decoder=False, checkpoint=None),
    )


def mmpretrain_cfg(name: str) -> dict:
    a = ARCHS[name]
    d = a['dims']
    neck_arch = dict(d, depth=d['num_layers']) if name == 'tiny' else name
    # mmpretrain's VQ-KD encoder: a plain ViT (absolute positions, no LayerScale)
    encoder = dict(arch=a['tokenizer'], img_size=a['img_size'], patch_size=a['patch_size'],
                   out_indices=-1, drop_path_rate=0., norm_cfg=dict(type='LN', eps=1e-6),
                   final_norm=True, out_type='featmap', with_cls_token=True,
                   use_abs_pos_emb=True, use_rel_pos_bias=False,
                   use_shared_rel_pos_bias=False, layer_scale_init_value=0.)
    return dict(
        type='BEiT',
        data_preprocessor=dict(type='TwoNormDataPreprocessor', mean=MEAN, std=STD,
                               second_mean=[127.5] * 3, second_std=[127.5] * 3, to_rgb=True),
        backbone=dict(
            type='BEiTPretrainViT', arch=_arch_arg(name), img_size=a['img_size'],
            patch_size=a['patch_size'], out_indices=[a['early'] - 1, -1], drop_path_rate=0.,
            final_norm=False, out_type='raw', layer_scale_init_value=a['layer_scale'],
            init_cfg=[dict(type='TruncNormal', std=0.02, layer='Linear'),
                      dict(type='TruncNormal', std=0.02, layer='Conv2d'),
                      dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]),
        neck=dict(type='BEiTV2Neck', num_layers=2, early_layers=a['early'],
                  backbone_arch=neck_arch, drop_path_rate=0.,
                  layer_scale_init_value=a['layer_scale']),
        head=dict(type='BEiTV2Head', embed_dims=d['embed_dims'], num_embed=VOCAB,
                  loss=dict(type='CrossEntropyLoss')),
        target_generator=dict(type='VQKD', encoder_config=encoder, num_embed=VOCAB,
                              embed_dims=CODE_DIMS, quantize_kmeans_init=False),
    )


class _Timed:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = 0.

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


def _checkpoint_blocks(backbone) -> None:
    """Activation checkpointing around each of mmpretrain's backbone blocks (its BEiTViT
    has no ``with_cp``), the same call our backbone makes."""
    import torch.nn as nn
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):

        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x, rel_pos_bias=None):
            if self.training:
                return checkpoint(self.layer, x, rel_pos_bias, use_reentrant=False)
            return self.layer(x, rel_pos_bias)

    backbone.layers = nn.ModuleList(Checkpointed(layer) for layer in backbone.layers)


def build(impl: str, args):
    """(model, make_data, mask_timer): ``make_data()`` gives one step's data dict."""
    import torch
    from mmengine.registry import DefaultScope
    a = ARCHS[args.arch]
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, a['img_size'], a['img_size'])
    views = [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for _ in range(2)]
    with DefaultScope.overwrite_default_scope(impl):
        if impl == 'mmbeit':
            import mmbeit.models  # noqa: F401  (registers the modules)
            from mmbeit.registry import MODELS
            model = MODELS.build(mmbeit_cfg(args.arch, args.with_cp))
        else:
            import mmpretrain.models  # noqa: F401
            from mmpretrain.registry import MODELS
            model = MODELS.build(mmpretrain_cfg(args.arch))
        model.init_weights()
    if impl == 'mmpretrain' and args.with_cp:
        _checkpoint_blocks(model.backbone)

    grid = a['img_size'] // a['patch_size']
    if impl == 'mmbeit':
        from mmbeit.datasets import BlockwiseMaskGenerator
        generator = BlockwiseMaskGenerator(num_masking_patches=a['masked'],
                                           min_num_patches=a['min_block'], min_aspect=0.3,
                                           exact=True)

        def draw_masks():  # one MIMMask draw per sample, stacked as default_collate does
            return torch.stack([torch.from_numpy(generator.sample((grid, grid)))
                                for _ in range(args.batch)])

        timer = _Timed(draw_masks)
        # default_collate's layout: [views, tokenizer views, masks], stacked
        return model, lambda: dict(inputs=views + [timer()]), timer

    from mmpretrain.datasets.transforms import BEiTMaskGenerator
    from mmpretrain.structures import DataSample
    transform = BEiTMaskGenerator(input_size=(grid, grid), num_masking_patches=a['masked'],
                                  max_num_patches=a['masked'], min_num_patches=a['min_block'])

    def draw_samples():
        return [DataSample().set_mask(transform(dict())['mask']) for _ in range(args.batch)]

    timer = _Timed(draw_samples)
    # default_collate's layout (mmpretrain's config): [views, tokenizer views], stacked
    return model, lambda: dict(inputs=views, data_samples=timer()), timer


def measure(args) -> dict:
    import numpy as np
    import torch
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device(args.device)
    dtype = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.dtype]
    model, make_data, mask_timer = build(args.impl, args)
    model.to(device)
    model.train()                     # not chained: mmpretrain's train() returns None
    params = [p for p in model.parameters() if p.requires_grad]
    optim = dict(optimizer=torch.optim.AdamW(params, lr=1.5e-3, betas=(0.9, 0.98),
                                             weight_decay=0.05),
                 clip_grad=dict(max_norm=3.0))
    if args.dtype == 'fp16':
        optim_wrapper = AmpOptimWrapper(loss_scale='dynamic', dtype='float16', **optim)
    else:
        optim_wrapper = OptimWrapper(**optim)

    forward = model                   # torch.compile(model) after the first step

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            data = model.data_preprocessor(make_data(), True)
            losses = forward(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        optim_wrapper.update_params(loss)
        return losses

    rss_before = current_rss_kb()
    with FlopCounterMode(display=False) as flop_counter:
        losses = step()               # the first warm-up step, always eager
    flops = flop_counter.get_total_flops()
    first = {k: float(v) for k, v in losses.items() if k.startswith('loss')}
    if not all(math.isfinite(v) for v in first.values()):
        sys.exit(f'{args.impl}: non-finite first losses {first}')
    if args.compile:
        forward = torch.compile(model, backend=args.compile)
        if device.type == 'cuda':  # the compiled steps' peak, not the eager first step's
            torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup - (0 if args.compile else 1)):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    mask_timer.seconds = 0.
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.iters
    n_params = sum(p.numel() for n, p in model.named_parameters()
                   if not n.startswith('target_generator.'))
    gflop = flops / args.batch / 1e9
    return dict(impl=args.impl, seconds=seconds, img_per_s=args.batch / seconds,
                mask_ms=1e3 * mask_timer.seconds / args.iters,
                mem_mb=peak_memory_mb(device.type, rss_before), params_m=n_params / 1e6,
                gflop_per_img=gflop, tflops=gflop * args.batch / seconds / 1e3,
                loss_1=first['loss_1'], loss_2=first['loss_2'])


def mfu(tflops: float, peak_tflops: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved TFLOP/s over the peak (None without a peak)."""
    return tflops / peak_tflops if peak_tflops else None


def report(args, med: dict, results: dict) -> str:
    a, b = med['mmbeit'], med['mmpretrain']
    lines = [
        f'BEiT v2 pretraining iteration, {args.arch} @ {ARCHS[args.arch]["img_size"]}, '
        f'batch {args.batch}, {args.device} {args.dtype}'
        f'{", with_cp" if args.with_cp else ""}'
        f'{f", compiled ({args.compile})" if args.compile else ""}: median of {args.repeats} '
        f'x {args.iters} iters ({args.warmup} warm-up); FLOPs counted on one training step, '
        f'MFU against {args.peak_tflops or "no"} peak TFLOP/s',
        '| impl | params (M) | s / iter | img / s | mask ms / iter | peak mem (MB) | '
        'GFLOP / img | TFLOP/s | MFU |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for impl in IMPLS:
        m = med[impl]
        util = mfu(m['tflops'], args.peak_tflops)
        lines.append(f'| {impl} | {m["params_m"]:.2f} | {m["seconds"]:.3f} | '
                     f'{m["img_per_s"]:.2f} | {m["mask_ms"]:.1f} | {m["mem_mb"]:.0f} | '
                     f'{m["gflop_per_img"]:.4g} | {m["tflops"]:.4g} | '
                     f'{"n/a" if util is None else f"{100 * util:.1f}%"} |')
    lines.append(f'| mmbeit vs mmpretrain | | {b["seconds"] / a["seconds"]:.2f}x faster | '
                 f'{a["img_per_s"] / b["img_per_s"]:.2f}x | | '
                 f'{a["mem_mb"] / max(b["mem_mb"], 1e-9):.2f}x the memory | | | |')
    for impl in IMPLS:
        firsts = ', '.join(f'{r["loss_1"]:.3f}/{r["loss_2"]:.3f}' for r in results[impl])
        lines.append(f'first-step loss_1/loss_2 of {impl} (ln {VOCAB} = '
                     f'{math.log(VOCAB):.3f}): {firsts}')
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', choices=list(ARCHS), default='base')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--iters', type=int, default=3, help='timed iterations per run')
    parser.add_argument('--warmup', type=int, default=1, help='untimed iterations first (>= 1)')
    parser.add_argument('--repeats', type=int, default=3, help='alternating rounds per impl')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32')
    parser.add_argument('--with-cp', action='store_true',
                        help='activation checkpointing of the backbone blocks')
    parser.add_argument('--compile', nargs='?', const='inductor', metavar='BACKEND',
                        help='torch.compile both models (default backend: inductor)')
    parser.add_argument('--peak-tflops', type=float, metavar='P',
                        help="the device's peak TFLOP/s in --dtype, for the MFU column "
                        '(989: H100 / H200 SXM, dense bf16)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--json', metavar='FILE', help='also write the results as JSON')
    parser.add_argument('--impl', choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype == 'fp16' and args.device != 'cuda':
        parser.error('--dtype fp16 needs --device cuda (its loss scaler is CUDA only)')
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f'--peak-tflops must be > 0, got {args.peak_tflops}')
    if min(args.iters, args.warmup, args.repeats, args.batch) < 1:
        parser.error('--iters, --warmup, --repeats and --batch must be >= 1 (the first '
                     'warm-up step also gives the losses that are checked)')

    if args.impl:                               # child process: one measurement
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args)))
        return 0

    results = run_rounds(__file__, sys.argv[1:], IMPLS, args.repeats)
    med = medians(results, ('seconds', 'img_per_s', 'mask_ms', 'mem_mb', 'params_m',
                            'gflop_per_img', 'tflops'))
    print(report(args, med, results))
    if args.json:
        a, b = med['mmbeit'], med['mmpretrain']
        summary = dict(
            config={k: v for k, v in vars(args).items() if k not in ('impl', 'json')},
            median=med, runs=results,
            speedup=b['seconds'] / a['seconds'],
            memory_ratio=a['mem_mb'] / max(b['mem_mb'], 1e-9),
            mfu={impl: mfu(med[impl]['tflops'], args.peak_tflops) for impl in IMPLS})
        with open(args.json, 'w') as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
