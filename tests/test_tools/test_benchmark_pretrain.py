"""tools/analysis_tools/benchmark_pretrain.py end to end at the tiny size: both
implementations run full pretraining iterations in their subprocesses, and the table,
the ratio row, the FLOP count and MFU, the first-step losses and the JSON file come out
well formed."""
import json
import math
import os.path as osp

import pytest
from _helpers import ROOT, run_tool

TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_pretrain.py')


@pytest.mark.slow  # about 14 s: timed training steps
def test_tiny_run_prints_table_and_json(tmp_path):
    out_json = tmp_path / 'bench.json'
    proc = run_tool([TOOL, '--arch', 'tiny', '--batch', '2', '--iters', '1', '--warmup', '1',
                     '--repeats', '1', '--peak-tflops', '0.5', '--json', out_json],
                    timeout=120)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('BEiT v2 pretraining iteration, tiny @ 32, batch 2, cpu fp32')
    assert lines[0].endswith('MFU against 0.5 peak TFLOP/s')
    rows = {ln.split('|')[1].strip(): [c.strip() for c in ln.split('|')[2:-1]]
            for ln in lines if ln.startswith('| ') and not ln.startswith('| impl')}
    assert set(rows) == {'mmbeit', 'mmpretrain', 'mmbeit vs mmpretrain'}
    for impl in ('mmbeit', 'mmpretrain'):
        params, sec, ips, mask_ms, mem, gflop, tflops = (float(c) for c in rows[impl][:7])
        assert params == float(rows['mmbeit'][0])  # the same model size on both sides
        assert sec > 0 and ips > 0 and mask_ms >= 0 and math.isfinite(mem)
        # FLOPs counted on one step; rate and utilisation follow from the timing
        assert 0.01 < gflop < 1  # tiny: ~0.07 GFLOP per image for forward + backward
        assert tflops == pytest.approx(gflop * ips / 1e3, rel=1e-2)
        assert float(rows[impl][7].rstrip('%')) == pytest.approx(100 * tflops / 0.5, rel=2e-2,
                                                                 abs=0.06)
    ratio = rows['mmbeit vs mmpretrain']
    assert ratio[1].endswith('x faster') and float(ratio[1][:-len('x faster')]) > 0
    assert ratio[2].endswith('x') and float(ratio[2][:-1]) > 0
    assert ratio[4].endswith('x the memory') and math.isfinite(float(ratio[4].split('x')[0]))
    assert ratio[5:] == ['', '', '']

    for impl in ('mmbeit', 'mmpretrain'):
        line = next(ln for ln in lines if ln.startswith(f'first-step loss_1/loss_2 of {impl}'))
        l1, l2 = (float(v) for v in line.rsplit(': ', 1)[1].split('/'))
        # random weights, 8192 codes: both losses near ln(8192) = 9.01
        assert abs(l1 - math.log(8192)) < 1 and abs(l2 - math.log(8192)) < 1

    summary = json.loads(out_json.read_text())
    assert summary['config']['arch'] == 'tiny' and summary['config']['batch'] == 2
    assert set(summary['median']) == {'mmbeit', 'mmpretrain'}
    assert summary['speedup'] > 0 and math.isfinite(summary['memory_ratio'])
    for impl in ('mmbeit', 'mmpretrain'):
        med = summary['median'][impl]
        assert summary['mfu'][impl] == pytest.approx(med['tflops'] / 0.5)
    assert len(summary['runs']['mmbeit']) == len(summary['runs']['mmpretrain']) == 1
