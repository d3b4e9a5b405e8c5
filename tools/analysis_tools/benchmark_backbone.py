"""Time forward + backward of mmbeit's BEiTViT against mmpretrain's BEiTViT.

Both backbones are built with the same architecture (per-layer relative position bias,
q/v bias, LayerScale, mean pooling through the final norm, stochastic depth) and fed the
same batch. Each measurement runs in its own subprocess so that peak memory is per
implementation; the implementations alternate over ``--repeats`` rounds and the table
reports medians and the ratios: speed-up of mmbeit (mmpretrain's time / mmbeit's) and
mmbeit's memory as a fraction of mmpretrain's.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` (weights included); on CPU,
the process's peak resident set over those steps minus its resident set before the first
step (so: activations, gradients and workspace; the weights are already there).

Example::

    python tools/analysis_tools/benchmark_backbone.py --arch base --img-size 224 --batch 8
    python tools/analysis_tools/benchmark_backbone.py --device cuda --dtype bf16 --batch 64
"""
import argparse
import json
import sys
import time

from benchmark_common import current_rss_kb, medians, peak_memory_mb, run_rounds

IMPLS = ('mmbeit', 'mmpretrain')


def build(impl: str, arch: str, img_size: int):
    common = dict(arch=arch, img_size=img_size, patch_size=16, drop_path_rate=0.1,
                  layer_scale_init_value=0.1, out_type='avg_featmap')
    if impl == 'mmbeit':
        from mmbeit.models.backbones.beit_vit import BEiTViT
        return BEiTViT(rel_pos_bias='per_layer', use_abs_pos_emb=False, **common)
    from mmpretrain.models.backbones import BEiTViT as MMPretrainBEiTViT
    return MMPretrainBEiTViT(use_abs_pos_emb=False, use_rel_pos_bias=True,
                             use_shared_rel_pos_bias=False, **common)


def measure(args) -> dict:
    import torch
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.dtype]
    model = build(args.impl, args.arch, args.img_size).to(device)
    model.train()                     # not chained: mmpretrain's train() returns None
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)[-1]
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    rss_before = current_rss_kb()
    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.iters
    mem_mb = peak_memory_mb(device.type, rss_before)
    params = sum(p.numel() for p in model.parameters())
    return dict(impl=args.impl, seconds=seconds, img_per_s=args.batch / seconds,
                mem_mb=mem_mb, params_m=params / 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='base')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=2, help='alternating rounds per impl')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--impl', choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.impl:                               # child process: one measurement
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args)))
        return 0

    results = run_rounds(__file__, sys.argv[1:], IMPLS, args.repeats)
    med = medians(results, ('seconds', 'img_per_s', 'mem_mb', 'params_m'))
    a, b = med['mmbeit'], med['mmpretrain']
    print(f'BEiTViT {args.arch} @ {args.img_size}, batch {args.batch}, {args.device} '
          f'{args.dtype}, forward+backward, median of {args.repeats} x {args.iters} iters')
    print('| impl | params (M) | s / iter | img / s | peak mem (MB) |')
    print('|---|---|---|---|---|')
    for impl in IMPLS:
        m = med[impl]
        print(f'| {impl} | {m["params_m"]:.2f} | {m["seconds"]:.3f} | {m["img_per_s"]:.1f} '
              f'| {m["mem_mb"]:.0f} |')
    print(f'| mmbeit vs mmpretrain | | {b["seconds"] / a["seconds"]:.2f}x faster | '
          f'{a["img_per_s"] / b["img_per_s"]:.2f}x | '
          f'{a["mem_mb"] / max(b["mem_mb"], 1e-9):.2f}x the memory |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
