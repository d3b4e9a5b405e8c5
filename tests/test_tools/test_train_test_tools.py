"""tools/train.py, tools/test.py and tools/dist_train.sh end to end on generated data.

Each run is a fresh process (as a user runs it). The model is the demo classifier made
smaller; the data is a small copy of the demo data.
"""
import json

import pytest
import torch
from _helpers import ROOT, free_port, run_tool

from mmbeit.checkpoint import read_checkpoint

DEMO_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py'


def write_config(tmp_path, data, max_iters=8, drop_path=0.0, extra=''):
    imagenet = f'{data}/imagenet'
    text = f'''
_base_ = '{DEMO_CFG}'
model = dict(
    backbone=dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                            feedforward_channels=64), drop_path_rate={drop_path}),
    head=dict(in_channels=32))
_data = dict(data_root='{imagenet}', metainfo=dict(classes='{imagenet}/meta/classes.txt'))
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=_data)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, dataset=_data)
test_dataloader = val_dataloader
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters},
                 val_interval=8)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=8, eta_min=1e-5, by_epoch=False,
                        begin=0, end=8)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval=4, max_keep_ckpts=-1,
                                     save_best=None))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=True)
{extra}
'''
    path = tmp_path / 'cfg.py'
    path.write_text(text)
    return path


def weights(path):
    return read_checkpoint(path)['state_dict']


@pytest.mark.slow
def test_train_then_test_reports_accuracy(tmp_path, demo_data):
    cfg = write_config(tmp_path, demo_data)
    work = tmp_path / 'work'
    out = run_tool(['tools/train.py', cfg, '--work-dir', work])
    assert (work / 'iter_8.pth').exists() and (work / 'iter_4.pth').exists()
    assert 'accuracy/top1' in out.stdout + out.stderr
    res = run_tool(['tools/test.py', cfg, work / 'iter_8.pth', '--work-dir', tmp_path / 'ev',
                    '--out', tmp_path / 'preds.pkl'])
    assert 'accuracy/top1' in res.stdout + res.stderr
    assert (tmp_path / 'preds.pkl').stat().st_size > 0

    # A second run into the same work dir is refused and leaves the checkpoints alone.
    before = (work / 'iter_8.pth').stat().st_mtime_ns
    again = run_tool(['tools/train.py', cfg, '--work-dir', work], check=False)
    assert again.returncode != 0
    assert 'already holds checkpoints' in again.stderr and '--resume' in again.stderr
    assert (work / 'iter_8.pth').stat().st_mtime_ns == before


@pytest.mark.slow
def test_resume_ends_with_the_same_weights(tmp_path, demo_data):
    cfg = write_config(tmp_path, demo_data)
    run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'full'])
    # "Interrupted" after 4 iterations: the checkpoint a killed run would have left...
    run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'part',
              '--cfg-options', 'train_cfg.max_iters=4'])
    assert not (tmp_path / 'part' / 'iter_8.pth').exists()
    # ... and resumed from it.
    run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'part', '--resume'])
    # the second run trained iterations 5..8 only (from scratch it would log 1..8, and,
    # being deterministic, end with the same weights)
    runs = sorted(p for p in (tmp_path / 'part').iterdir() if p.is_dir())
    logged = [json.loads(line)['iter'] for line in
              (runs[-1] / 'vis_data' / 'scalars.json').read_text().splitlines()
              if 'loss' in json.loads(line)]
    assert logged == [5, 6, 7, 8]
    full, resumed = weights(tmp_path / 'full' / 'iter_8.pth'), weights(
        tmp_path / 'part' / 'iter_8.pth')
    assert full.keys() == resumed.keys()
    start = weights(tmp_path / 'part' / 'iter_4.pth')
    assert any(not torch.equal(start[k], full[k]) for k in full)    # it did train on
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


PROBE = '''
import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmbeit.registry import HOOKS


@HOOKS.register_module()
class ProbeHook(Hook):
    """Records the sample indices each rank trained on and its final parameters."""

    def __init__(self, out):
        self.out, self.seen = out, []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seen += [int(s.sample_idx) for s in data_batch['data_samples']]

    def after_train(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        torch.save({'seen': self.seen, 'world': dist.get_world_size(),
                    'wrapper': type(runner.model).__name__,
                    'params': {k: v.detach().clone() for k, v in model.state_dict().items()}},
                   f'{self.out}/rank{runner.rank}.pt')
'''


@pytest.mark.slow
def test_two_cpu_ranks_train_in_sync_on_different_samples(tmp_path, demo_data):
    (tmp_path / 'probe_hook.py').write_text(PROBE)
    extra = (f"custom_imports = dict(imports=['probe_hook'], allow_failed_imports=False)\n"
             f"custom_hooks = [dict(type='ProbeHook', out='{tmp_path}')]\n"
             f"model = dict(backbone=dict(drop_path_rate=0.1))\n")
    cfg = write_config(tmp_path, demo_data, max_iters=6, extra=extra)
    run_tool(['tools/dist_train.sh', cfg, '2', '--work-dir', tmp_path / 'work',
              '--no-validate'],
             env={'PORT': str(free_port()),
                  'PYTHONPATH': f'{ROOT}:{tmp_path}'})
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert r0['world'] == r1['world'] == 2
    assert r0['wrapper'] == 'MMDistributedDataParallel'
    assert len(r0['seen']) == len(r1['seen']) == 6 * 4
    # DefaultSampler splits each epoch's permutation between the ranks: within an epoch
    # (64 samples = 8 iterations x 4 x 2 ranks) the two ranks never share a sample.
    assert not set(r0['seen']) & set(r1['seen'])
    for k, v in r0['params'].items():
        assert torch.equal(v, r1['params'][k]), k
    start = weights(tmp_path / 'work' / 'iter_4.pth')
    assert any(not torch.equal(start[k], r0['params'][k]) for k in start)


def test_test_tool_refuses_a_crafted_checkpoint(tmp_path, demo_data):
    import os

    class RunsCode:
        def __reduce__(self):
            return os.system, (f'touch {tmp_path}/code_ran',)

    torch.save({'state_dict': {}, 'x': RunsCode()}, tmp_path / 'evil.pth')
    cfg = write_config(tmp_path, demo_data)
    res = run_tool(['tools/test.py', cfg, tmp_path / 'evil.pth'], check=False)
    assert res.returncode != 0
    assert 'UnsafeCheckpointError' in res.stderr and 'evil.pth' in res.stderr
    assert not (tmp_path / 'code_ran').exists()


def test_test_tool_refuses_a_checkpoint_that_does_not_fit(tmp_path, demo_data):
    """Stock mmengine loads load_from non-strictly: it would evaluate random weights and
    exit 0. tools/test.py exits non-zero naming the keys."""
    torch.save({'state_dict': {'backbone.foo': torch.zeros(1)}}, tmp_path / 'foo.pth')
    cfg = write_config(tmp_path, demo_data)
    res = run_tool(['tools/test.py', cfg, tmp_path / 'foo.pth', '--work-dir',
                    tmp_path / 'ev'], check=False)
    assert res.returncode != 0
    assert 'CheckpointMismatchError' in res.stderr and 'foo.pth' in res.stderr
    assert 'unexpected (in the file, not in the model): [backbone.foo]' in res.stderr
    assert 'backbone.patch_embed.proj.weight' in res.stderr  # a missing key, named
    assert 'accuracy/top1' not in res.stdout + res.stderr  # nothing was evaluated


@pytest.mark.parametrize('args, message', [
    (['configs/nope.py'], "config file 'configs/nope.py' does not exist"),
    (['{cfg}', '--amp', 'fp16'], '--amp fp16 needs a CUDA GPU'),
    (['{cfg}', '--auto-scale-lr', '--cfg-options', 'auto_scale_lr=None'],
     'has no auto_scale_lr=dict(base_batch_size=...)'),
    (['{cfg}', '--cfg-options', 'model.backbone.drop_pth_rate=0.1'],
     "model.backbone.drop_pth_rate: BEiTViT (mmbeit.models.backbones.beit_vit) has no "
     "argument 'drop_pth_rate'; did you mean 'drop_path_rate'"),
    (['{cfg}', '--cfg-options', 'model.backbone.drop_path_rate=-0.1'],
     'BEiTViT: drop_path_rate must be a finite number in [0, 1), got -0.1'),
    (['{cfg}', '--cfg-options', 'model.backbone.arch'], "'model.backbone.arch' has no \"=\""),
])
def test_train_tool_bad_input(args, message, tmp_path, demo_data):
    if torch.cuda.is_available() and '--amp' in args:
        pytest.skip('this machine has CUDA: --amp fp16 is valid here')
    cfg = write_config(tmp_path, demo_data)
    res = run_tool(['tools/train.py', *(a.format(cfg=cfg) for a in args), '--work-dir',
                    tmp_path / 'work'], check=False)
    assert res.returncode != 0 and message in res.stderr
    assert not (tmp_path / 'work').exists() or not any((tmp_path / 'work').glob('*.pth'))
