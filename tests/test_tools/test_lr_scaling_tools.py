"""The lr a training run uses, as users launch it: ``tools/train.py`` (one process, with
``--accumulate``), ``tools/dist_train.sh`` with 2 gloo ranks (with ``--accumulate``), and
the two-node launch (``NNODES=2 NODE_RANK=0|1 MASTER_ADDR PORT``, with ``--no-scale-lr``)
as two one-rank CPU "nodes" of this machine. Each run logs the total batch and lr once; the
lr is read back from the log, the dumped config and ``vis_data/scalars.json`` (what the
optimizer really had)."""
import glob
import json
import os
import re
import subprocess

import pytest
from _helpers import ROOT, free_port, run_tool, tool_main
from mmengine.config import Config

DEMO_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py'
LR, BASE, BATCH = 2e-3, 32, 4   # the demo config's lr and base batch; 4 per process here


def write_config(tmp_path, data, max_iters=2):
    imagenet = f'{data}/imagenet'
    text = f'''
_base_ = '{DEMO_CFG}'
model = dict(
    backbone=dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                            feedforward_channels=64), drop_path_rate=0.0),
    head=dict(in_channels=32))
_data = dict(data_root='{imagenet}', metainfo=dict(classes='{imagenet}/meta/classes.txt'))
train_dataloader = dict(batch_size={BATCH}, num_workers=0, persistent_workers=False,
                        dataset=_data)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters})
# lr at the first iteration = the optimizer's lr; eta_min is an absolute lr floor
param_scheduler = [dict(type='CosineAnnealingLR', T_max=8, eta_min=1e-4, by_epoch=False,
                        begin=0, end=8)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval=100, save_last=False,
                                     save_best=None))
log_processor = dict(by_epoch=False)
'''
    path = tmp_path / 'cfg.py'
    path.write_text(text)
    return path


def lr_line(work):
    """The total-batch / lr line of the run's log file (exactly one), as (the numbers in it
    in order, the line): ``total batch N x b [x K] = T; lr ...``."""
    (log, ) = glob.glob(f'{work}/*/*.log')
    lines = [ln for ln in open(log) if 'INFO - total batch' in ln]
    assert len(lines) == 1, lines
    line = lines[0].split(' - ')[-1].strip()
    numbers = [float(x) for x in re.findall(r'(?<![\w.-])\d+(?:\.\d+)?(?:e-?\d+)?', line)]
    return numbers, line


def first_lr(work):
    (scalars, ) = glob.glob(f'{work}/*/vis_data/scalars.json')
    return json.loads(open(scalars).readline())['lr']


def dumped(work):
    """The config the Runner dumped into the work dir (under the config's file name)."""
    return Config.fromfile(f'{work}/cfg.py')


@pytest.mark.slow  # about 10 s: a training run
def test_train_with_accumulation_logs_and_uses_the_scaled_lr(tmp_path, demo_data):
    cfg = write_config(tmp_path, demo_data)
    work = tmp_path / 'work'
    run_tool(['tools/train.py', cfg, '--work-dir', work, '--no-validate', '--accumulate', '2'])
    total = 1 * BATCH * 2
    lr = LR * total / BASE
    numbers, line = lr_line(work)
    # N x b x K = T; lr = config lr x T / base, the base from auto_scale_lr.base_batch_size
    assert numbers[:8] == pytest.approx([1, BATCH, 2, total, lr, LR, total, BASE], rel=1e-6)
    assert f'auto_scale_lr.base_batch_size={BASE}' in line
    assert first_lr(work) == pytest.approx(lr, rel=1e-6)   # not scaled a second time
    d = dumped(work)
    assert d.optim_wrapper.optimizer.lr == pytest.approx(lr, rel=1e-12)
    assert d.optim_wrapper.accumulative_counts == 2
    assert d.param_scheduler[0].eta_min == pytest.approx(1e-4 * total / BASE, rel=1e-12)
    assert d.auto_scale_lr.enable is False


@pytest.mark.parametrize('args, message', [
    (['--accumulate', '0'], '--accumulate 0: K must be 1 or more'),
    (['--auto-scale-lr', '--no-scale-lr'], '--auto-scale-lr and --no-scale-lr contradict'),
])
def test_bad_flags(args, message, tmp_path, demo_data):
    cfg = write_config(tmp_path, demo_data)
    error = tool_main(f'{ROOT}/tools/train.py', cfg, '--work-dir', tmp_path / 'work', *args)
    assert message in error
    assert not (tmp_path / 'work').exists()


@pytest.mark.slow  # about 12 s: a training run on 2 ranks
def test_two_ranks_scale_the_lr(tmp_path, demo_data):
    """2 gloo ranks accumulating 2 iterations (DDP syncs only on the second); also the old
    command line: --auto-scale-lr (mmengine's switch) must not make mmengine scale a
    second time."""
    cfg = write_config(tmp_path, demo_data)
    work = tmp_path / 'work'
    run_tool(['tools/dist_train.sh', cfg, '2', '--work-dir', work, '--no-validate',
              '--accumulate', '2', '--auto-scale-lr'], env={'PORT': str(free_port())})
    total = 2 * BATCH * 2
    assert lr_line(work)[0][:8] == pytest.approx(
        [2, BATCH, 2, total, LR * total / BASE, LR, total, BASE], rel=1e-6)
    assert first_lr(work) == pytest.approx(LR * total / BASE, rel=1e-6)


@pytest.mark.slow  # about 11 s: two one-rank "nodes"
def test_two_nodes_of_one_rank_and_no_scale_lr(tmp_path, demo_data):
    """``NNODES=2``: two torchrun agents (the "machines") meet at MASTER_ADDR:PORT; both
    end OK and the run's world is both of them. ``--no-scale-lr`` keeps the config lr."""
    cfg = write_config(tmp_path, demo_data)
    work = tmp_path / 'work'
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', NNODES='2',
                   NODE_RANK=str(node), MASTER_ADDR='127.0.0.1', PORT=port)
        procs.append(subprocess.Popen(
            ['bash', 'tools/dist_train.sh', str(cfg), '1', '--work-dir', str(work),
             '--no-validate', '--no-scale-lr'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for node, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f'node {node}:\n{out[-4000:]}'
    numbers, line = lr_line(work)
    assert numbers == pytest.approx([2, BATCH, 2 * BATCH, LR], rel=1e-6)  # no K; config lr
    assert '--no-scale-lr' in line  # what turned the scaling off
    assert first_lr(work) == pytest.approx(LR, rel=1e-6)
    assert dumped(work).optim_wrapper.optimizer.lr == LR


def test_dist_train_refuses_a_second_node_without_master_addr(tmp_path):
    env = {'NNODES': '2', 'NODE_RANK': '1'}
    env_clean = {k: v for k, v in os.environ.items() if k != 'MASTER_ADDR'}
    res = subprocess.run(['bash', 'tools/dist_train.sh', 'cfg.py', '8'], cwd=ROOT,
                         env=dict(env_clean, **env), capture_output=True, text=True)
    assert res.returncode == 2 and 'NNODES=2 needs MASTER_ADDR' in res.stderr
    res = subprocess.run(['bash', 'tools/dist_train.sh', 'cfg.py', '8'], cwd=ROOT,
                         env=dict(env_clean, NNODES='2', NODE_RANK='2', MASTER_ADDR='h0'),
                         capture_output=True, text=True)
    assert res.returncode == 2 and 'NODE_RANK=2 must be one of 0 .. 1' in res.stderr
