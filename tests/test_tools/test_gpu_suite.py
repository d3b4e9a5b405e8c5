"""tools/analysis_tools/gpu_suite.py: the CPU smoke mode end to end (what CI can run of the
GPU suite), and the pieces it judges by: the attention flag rule, the training-log
summary, the data override through dataset wrappers, the derived training config."""
import importlib.util
import json
import math
import os.path as osp

import pytest
import torch
from _helpers import ROOT, run_tool

TOOLS = osp.join(ROOT, 'tools', 'analysis_tools')
SUITE = osp.join(TOOLS, 'gpu_suite.py')


def load(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 45 s: every part of the suite, one process each
def test_cpu_smoke_runs_every_part(tmp_path):
    out, work = tmp_path / 'out', tmp_path / 'work'
    proc = run_tool([SUITE, '--device', 'cpu', '--smoke', '--out', out, '--work', work],
                    timeout=400)
    summary = json.loads((out / 'summary.json').read_text())
    parts = summary['parts']
    assert {p: parts[p]['status'] for p in 'abcd'} == dict.fromkeys('abcd', 'ok'), \
        {p: parts[p].get('summary') for p in parts}
    assert sorted(f.name for f in out.iterdir()) == [
        'a.json', 'b.json', 'c.json', 'd.json', 'summary.json', 'summary.md']
    report = (out / 'summary.md').read_text()
    assert report in proc.stdout  # printed as written
    for p in 'abcd':  # one summary row and one section per part
        assert f'| {p} | {parts[p]["title"]} | ok |' in report
        assert f'## {p}. {parts[p]["title"]}' in report

    # (a) on CPU the math backend runs; bf16 against fp64: small but not zero errors
    rows = parts['a']['rows']
    math_rows = [r for r in rows if r['backend'] == 'MATH']
    assert {(r['kind'], r['status']) for r in math_rows} == {('sdpa', 'ran'), ('module', 'ran')}
    assert len(math_rows) == 3  # sdpa with the bias in bf16 and in fp32, the module
    for r in math_rows:
        for q, e in r['errors'].items():
            assert e['rel'] < 1e-2, (r['bias'], q, e)
            if q != 'grad table' or r['bias'].startswith('bf16'):
                assert e['rel'] > 1e-4, (r['bias'], q, e)  # bf16 really was used
        assert r['flag'] == []
    assert all(r['status'] == 'not available' and r['reason'] for r in rows
               if r['backend'] in ('CUDNN_ATTENTION', 'EFFICIENT_ATTENTION'))

    # (b) every run finished with positive numbers; the compiled model is the same model
    runs = {(r['impl'], r['mode']): r for r in parts['b']['runs']}
    assert set(runs) == {('mmbeit', 'eager'), ('mmpretrain', 'eager'),
                         ('mmbeit', 'compiled (eager)')}
    for r in runs.values():
        assert r['status'] == 'ok'
        for key in ('img_per_s', 'seconds', 'gflop_per_img', 'tflops'):
            assert r[key] > 0 and math.isfinite(r[key]), (key, r)
        assert math.isfinite(r['mem_mb']) and r['mfu'] is None  # no peak given on CPU
        assert abs(r['loss_1'] - math.log(8192)) < 1
    assert runs[('mmbeit', 'eager')]['gflop_per_img'] == \
        runs[('mmbeit', 'compiled (eager)')]['gflop_per_img']
    assert [r['mode'] for r in parts['b']['ratios']] == ['eager']

    # (c) the flagship config trained 3 iterations with finite losses
    train = parts['c']['train']
    assert train['iters'] == 3 and train['finite']
    assert abs(train['loss_first'] - 2 * math.log(8192)) < 1  # two losses near ln 8192
    assert train['img_per_s'] > 0 and train['data_time_ms'] >= 0
    assert 'data_root' in parts['c']['config'] and "'checkpoint': None" in parts['c']['config']
    assert parts['c']['lr_line'].startswith('total batch 1 x 2 = 2; lr 1.46484375e-06 = ')

    # (d) the config's DataLoader delivered batches of two 224 px views
    assert parts['d']['img_per_s'] > 0 and parts['d']['batches'] > 0
    assert parts['d']['view_shape'] == [4, 3, 224, 224]


def test_flag_rule_catches_a_misread_bias():
    """The flag rule of part (a) on the math kernel: the bias read transposed (one way a
    kernel can misread it) is flagged, the bias read right is not."""
    tool = load('sdpa_bias_precision')
    t = tool.sdpa_inputs(batch=1, device=torch.device('cpu'))
    ref = tool.sdpa_reference(t)
    good = tool.sdpa_run(t, torch.bfloat16)
    misread = dict(t, index=t['index'].t().contiguous())  # keys and queries swapped
    bad = tool.sdpa_run(misread, torch.bfloat16)
    good_errs = {q: tool.errors(good[q], ref[q]) for q in tool.SDPA_QUANTITIES}
    bad_errs = {q: tool.errors(bad[q], ref[q]) for q in tool.SDPA_QUANTITIES}
    assert tool.flagged(good_errs, good_errs) == []
    assert 'out' in tool.flagged(bad_errs, good_errs)
    nan = dict(good_errs, out=dict(rel=float('nan'), max_abs=float('nan')))
    assert tool.flagged(nan, good_errs) == ['out']
    # the floor: errors below 4 unit roundoffs are never flagged, however exact math was
    exact = {q: dict(rel=0.0, max_abs=0.0) for q in good_errs}
    assert tool.flagged({q: dict(rel=7e-3, max_abs=0.) for q in good_errs}, exact) == []


def test_training_summary_from_scalars():
    suite = load('gpu_suite')
    records = [dict(loss=10.0 - 0.1 * i, time=0.5, data_time=0.1) for i in range(30)]
    s = suite.summarize_training(records, batch=128)
    assert s['iters'] == 30 and s['mean_of'] == 10 and s['finite'] and s['falling']
    assert s['loss_first'] == pytest.approx(10 - 0.45) and s['loss_last'] == pytest.approx(7.55)
    assert s['img_per_s'] == pytest.approx(256)  # 128 images per 0.5 s
    assert s['data_time_ms'] == pytest.approx(100)
    records[-1]['loss'] = float('nan')
    assert not suite.summarize_training(records, batch=128)['finite']


def test_data_root_goes_through_wrappers(tmp_path):
    suite = load('gpu_suite')
    wrapped = dict(type='SeededDataset', dataset=dict(type='ImageNet', data_root='x'))
    assert suite._set_data(wrapped, '/d', 6) == dict(dataset=dict(data_root='/d', indices=6))
    assert suite._set_data(dict(type='ImageNet'), '/d') == dict(data_root='/d')
    assert suite._inner_dataset(wrapped) is wrapped['dataset']


def test_derived_config_keeps_the_recipe_but_data_and_length(tmp_path):
    from mmengine.config import Config
    suite = load('gpu_suite')
    args = suite.argparse.Namespace(work=str(tmp_path), smoke=False, train_iters=300,
                                    train_batch=128, train_workers=14, workers=16,
                                    loader_batch=128)
    path, _, iters = suite.train_config(args, '/data/jpegs')
    cfg, base = Config.fromfile(path), Config.fromfile(suite.FLAGSHIP)
    assert iters == 300
    inner = cfg.train_dataloader.dataset.dataset
    assert inner.data_root == '/data/jpegs' and inner.indices % 128 == 0
    epochs = cfg.train_cfg.max_epochs
    assert epochs * inner.indices // 128 == 300
    assert cfg.model.target_generator.checkpoint is None
    warm, decay = cfg.param_scheduler
    assert (warm.type, warm.begin, warm.end) == ('LinearLR', 0, 1)
    assert (decay.type, decay.begin, decay.end) == ('CosineAnnealingLR', 1, epochs)
    # everything else is the flagship's
    assert cfg.model.backbone == base.model.backbone and cfg.optim_wrapper == base.optim_wrapper
    assert cfg.train_dataloader.dataset.dataset.pipeline == base.train_dataloader.dataset.\
        dataset.pipeline
    assert cfg.auto_scale_lr == base.auto_scale_lr


def test_bad_arguments_are_refused(tmp_path, capsys):
    suite = load('gpu_suite')
    with pytest.raises(SystemExit):
        suite.main(['--device', 'cpu', '--parts', 'a,x', '--out', str(tmp_path)])
    assert "--parts takes a comma-separated subset of a,b,c,d, got 'a,x'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        suite.main(['--device', 'cpu', '--workers', '0', '--out', str(tmp_path)])
    assert '--workers must be > 0, got 0' in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            suite.main(['--device', 'cuda', '--out', str(tmp_path)])
        assert '--device cuda: no CUDA device is visible' in capsys.readouterr().err


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def test_a_part_past_its_time_is_ended_with_its_children(tmp_path):
    """run_cmd's timeout ends the process and what it started (dataloader or compile
    workers), and keeps what it printed."""
    import sys
    import time
    suite = load('gpu_suite')
    pid_file = tmp_path / 'child.pid'
    code = ('import subprocess, sys, time\n'
            f'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])\n'
            f'open({str(pid_file)!r}, "w").write(str(p.pid))\n'
            'print("started", flush=True)\n'
            'time.sleep(60)\n')
    res = suite.run_cmd([sys.executable, '-c', code], 3, str(tmp_path / 'log'), echo=False)
    assert res['returncode'] is None and res['seconds'] < 20
    assert 'started' in res['tail'] and 'started' in (tmp_path / 'log').read_text()
    child = int(pid_file.read_text())
    deadline = time.time() + 10
    while _running(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running(child)
