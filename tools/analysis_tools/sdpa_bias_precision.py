"""bf16 attention with BEiT's relative position bias, per SDPA backend, against fp64.

BEiT's attention (``BEiTAttention`` in ``mmbeit/models/backbones/beit_vit.py``) adds the
relative position bias to the logits through ``scaled_dot_product_attention``'s
``attn_mask``: the bias [nH, N, N] is gathered from a table [T, nH] with the relative
position index (``mmbeit/models/utils/rel_pos.py``; BEiT paper appendix A, unilm
``beit/modeling_finetune.py``), cast to q's dtype and broadcast over the batch. PyTorch picks a
kernel for that call (cuDNN, memory-efficient, math; flash attention takes no additive
bias), and the kernels differ in how they read and differentiate the bias: a bias whose
dtype is not q's is silently misread on some cuDNN paths. This tool forces each backend in
turn with ``torch.nn.attention.sdpa_kernel`` and measures, in bf16:

* ``sdpa`` rows: the SDPA call alone on bf16 q, k, v [B, nH, N, hd] with the bias gathered
  from an fp32 table, passed in q's dtype (what our attention does) and in fp32. Errors of
  the output and of the gradients of q, k, v and of the table, against an fp64 reference
  computed explicitly (softmax(q k^T * hd^-0.5 + bias) v) from the same bf16-rounded inputs,
  so they are the kernel's own error.
* ``module`` rows: ``BEiTAttention`` itself (per-layer table, q/v bias) under
  ``torch.autocast(bf16)``, as in training: errors of the output and of the gradients of
  the input, the table and the qkv weight, against the fp64 copy of the module on its
  explicit path (``return_attn=True``), so they include bf16 rounding of the projections.

Every error is ``rel / max abs``: the norm-wise relative error ||x - ref|| / ||ref|| and the
largest absolute difference. ``vs math`` is the largest relative difference from the math
backend's bf16 result of the same row kind. A row is flagged when one of its relative errors
exceeds 4 x the math backend's (same row kind and bias dtype), floored at bf16's unit
roundoff 2^-9: a kernel that reads or differentiates the bias wrongly is far above that.

Sizes: BEiT base (12 heads of 64 dims, 768 channels, 14 x 14 patches + cls = 197 tokens).

Usage::

    python tools/analysis_tools/sdpa_bias_precision.py --device cuda [--batch 32] \\
        [--json out.json]
"""
import argparse
import copy
import json
import math
import sys
import warnings

import torch
import torch.nn.functional as F

from mmbeit.models.backbones.beit_vit import BEiTAttention, beit_init_weights_
from mmbeit.models.utils.rel_pos import (
    build_relative_position_index,
    gather_rel_pos_bias,
    rel_pos_table_len,
)

HEADS, HEAD_DIMS, GRID = 12, 64, (14, 14)
UNIT_ROUNDOFF_BF16 = 2.0 ** -9
FLAG_FACTOR = 4.0
SDPA_QUANTITIES = ('out', 'grad q', 'grad k', 'grad v', 'grad table')
MODULE_QUANTITIES = ('out', 'grad x', 'grad table', 'grad qkv.weight')


def backends():
    """(name, SDPBackend) in the order they are reported; those this torch lacks are left
    out (CUDNN_ATTENTION came in torch 2.4)."""
    from torch.nn.attention import SDPBackend
    names = ('CUDNN_ATTENTION', 'EFFICIENT_ATTENTION', 'FLASH_ATTENTION', 'MATH')
    return [(n, getattr(SDPBackend, n)) for n in names if hasattr(SDPBackend, n)]


def errors(got: torch.Tensor, ref: torch.Tensor) -> dict:
    got, ref = got.detach().double(), ref.detach().double()
    diff = got - ref
    return dict(rel=float(diff.norm() / ref.norm().clamp_min(1e-300)),
                max_abs=float(diff.abs().max()))


def _run_forced(backend, fn):
    """``fn()`` with only ``backend`` allowed; (result, None) or (None, reason)."""
    from torch.nn.attention import sdpa_kernel
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            with sdpa_kernel([backend]):
                return fn(), None
        except RuntimeError as err:
            why = [str(w.message).split(' (Triggered internally')[0] for w in caught]
            why = [w for w in why if 'kernel not used because' not in w] or [str(err)]
            return None, '; '.join(dict.fromkeys(line.splitlines()[0] for line in why))


# ------------------------------------------------------------------------- sdpa rows
def sdpa_inputs(batch: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1] + 1
    qkv = [torch.randn(batch, HEADS, n, HEAD_DIMS, generator=g).to(torch.bfloat16)
           for _ in range(3)]  # [B, nH, N, hd], rounded to bf16 once
    table = torch.randn(rel_pos_table_len(GRID), HEADS, generator=g)  # [T, nH], fp32
    grad_out = torch.randn(batch, HEADS, n, HEAD_DIMS, generator=g).to(torch.bfloat16)
    index = build_relative_position_index(GRID)
    return {k: v.to(device) for k, v in
            dict(q=qkv[0], k=qkv[1], v=qkv[2], table=table, grad_out=grad_out,
                 index=index).items()}


def sdpa_reference(t: dict) -> dict:
    """fp64 explicit attention from the same (bf16-rounded) inputs, and its gradients."""
    q, k, v, table = (t[n].double().requires_grad_() for n in ('q', 'k', 'v', 'table'))
    bias = gather_rel_pos_bias(table, t['index'])  # [nH, N, N]
    logits = q @ k.transpose(-2, -1) * HEAD_DIMS ** -0.5 + bias  # [B, nH, N, N]
    out = logits.softmax(-1) @ v  # [B, nH, N, hd]
    out.backward(t['grad_out'].double())
    return dict(zip(SDPA_QUANTITIES, (out, q.grad, k.grad, v.grad, table.grad)))


def sdpa_run(t: dict, bias_dtype: torch.dtype) -> dict:
    """bf16 SDPA with the bias gathered from the fp32 table and cast to ``bias_dtype``."""
    q, k, v = (t[n].clone().requires_grad_() for n in ('q', 'k', 'v'))
    table = t['table'].clone().requires_grad_()
    bias = gather_rel_pos_bias(table, t['index']).to(bias_dtype)  # [nH, N, N]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=HEAD_DIMS ** -0.5)
    out.backward(t['grad_out'])
    return dict(zip(SDPA_QUANTITIES, (out, q.grad, k.grad, v.grad, table.grad)))


# ------------------------------------------------------------------------- module rows
def module_inputs(batch: int, device: torch.device, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    attn = BEiTAttention(HEADS * HEAD_DIMS, HEADS, window_size=GRID)
    beit_init_weights_(attn)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()  # a trained table's scale, not zeros
        attn.q_bias.normal_(0, 0.1)
        attn.v_bias.normal_(0, 0.1)
    n = GRID[0] * GRID[1] + 1
    x = torch.randn(batch, n, HEADS * HEAD_DIMS)  # [B, N, C]
    grad_out = torch.randn(batch, n, HEADS * HEAD_DIMS)
    return dict(module=attn.to(device), x=x.to(device), grad_out=grad_out.to(device))


def _module_grads(module, x, out) -> tuple:
    return (out, x.grad, module.relative_position_bias_table.grad, module.qkv.weight.grad)


def module_reference(t: dict) -> dict:
    module = copy.deepcopy(t['module']).double()
    x = t['x'].double().requires_grad_()
    out, _ = module(x, return_attn=True)  # the explicit softmax path, not SDPA
    out.backward(t['grad_out'].double())
    return dict(zip(MODULE_QUANTITIES, _module_grads(module, x, out)))


def module_run(t: dict) -> dict:
    module = copy.deepcopy(t['module'])
    x = t['x'].clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = module(x)
    out.float().backward(t['grad_out'])
    return dict(zip(MODULE_QUANTITIES, _module_grads(module, x, out)))


# ------------------------------------------------------------------------- the table
def measure(device: torch.device, batch: int) -> list:
    """One dict per (row kind, backend, bias dtype): status, errors, flag."""
    rows = []
    kinds = [('sdpa', q_dtype_name, sdpa_inputs, sdpa_reference,
              (lambda t, d=dtype: sdpa_run(t, d)), SDPA_QUANTITIES)
             for q_dtype_name, dtype in (('bf16 (= q)', torch.bfloat16),
                                         ('fp32', torch.float32))]
    kinds.append(('module', 'bf16 (cast by the module)', module_inputs, module_reference,
                  module_run, MODULE_QUANTITIES))
    for kind, bias_name, make, reference, run, quantities in kinds:
        t = make(batch, device)
        ref = reference(t)
        results = {}
        for name, backend in backends():
            got, why = _run_forced(backend, lambda: run(t))
            if got is None:
                why = why if len(why) <= 120 else why[:117] + '...'
                if name == 'FLASH_ATTENTION' and device.type == 'cuda':
                    why = 'not applicable: flash attention takes no additive bias'
                rows.append(dict(kind=kind, backend=name, bias=bias_name,
                                 status='not available', reason=why))
                continue
            results[name] = got
            rows.append(dict(kind=kind, backend=name, bias=bias_name, status='ran',
                             errors={q: errors(got[q], ref[q]) for q in quantities}))
        math_row = next((r for r in rows if r['kind'] == kind and r['bias'] == bias_name
                         and r['backend'] == 'MATH' and r['status'] == 'ran'), None)
        for row in rows:
            if row['kind'] != kind or row['bias'] != bias_name or row['status'] != 'ran':
                continue
            if math_row is None:
                row['flag'] = None
                continue
            row['vs_math'] = max(errors(results[row['backend']][q], results['MATH'][q])['rel']
                                 for q in quantities)
            row['flag'] = flagged(row['errors'], math_row['errors'])
    return rows


def flagged(errs: dict, math_errs: dict) -> list:
    """The quantities whose relative error exceeds FLAG_FACTOR x the math backend's,
    floored at bf16's unit roundoff (or is not finite)."""
    return [q for q, e in errs.items()
            if not math.isfinite(e['rel'])
            or e['rel'] > FLAG_FACTOR * max(math_errs[q]['rel'], UNIT_ROUNDOFF_BF16)]


def markdown(rows: list, device: str, batch: int) -> str:
    lines = [f'bf16 SDPA with the relative position bias vs fp64, {device}, batch {batch}, '
             f'{HEADS} heads x {HEAD_DIMS}, {GRID[0] * GRID[1] + 1} tokens; cells: rel / max '
             f'abs error; flag: rel > {FLAG_FACTOR:g} x math\'s (floor 2^-9)']
    for kind, quantities in (('sdpa', SDPA_QUANTITIES), ('module', MODULE_QUANTITIES)):
        lines += ['', f'| {kind} | backend | bias dtype | ' + ' | '.join(quantities)
                  + ' | vs math | flag |',
                  '|---|---|---|' + '---|' * len(quantities) + '---|---|']
        for r in (r for r in rows if r['kind'] == kind):
            if r['status'] != 'ran':
                cells = [r['reason']] + [''] * (len(quantities) + 1)
            else:
                cells = [f'{r["errors"][q]["rel"]:.2e} / {r["errors"][q]["max_abs"]:.1e}'
                         for q in quantities]
                cells.append(f'{r["vs_math"]:.1e}' if 'vs_math' in r else '')
                cells.append('' if r['flag'] is None else
                             ('**FLAG: ' + ', '.join(r['flag']) + '**') if r['flag'] else 'ok')
            lines.append(f'| | {r["backend"]} | {r["bias"]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--json', metavar='FILE', help='also write the rows as JSON')
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f'--batch must be >= 1, got {args.batch}')
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is visible (use --device cpu)')
    rows = measure(device, args.batch)
    table = markdown(rows, args.device, args.batch)
    print(table)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=args.device, batch=args.batch, torch=torch.__version__,
                           rows=rows, table=table), f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
