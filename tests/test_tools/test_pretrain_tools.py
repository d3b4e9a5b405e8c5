"""BEiT v2 pretraining through the user-facing tools, at the real base size, on CPU:
``tools/train.py configs/beitv2/beitv2_vit-base_300e.py`` and the same through
``tools/dist_train.sh`` with 2 gloo ranks, pointed at the generated demo data for one
iteration each (the tokenizer keeps random weights and a warning names the config key to
set)."""
import glob
import json
import math
import os.path as osp

import pytest
from _helpers import ROOT, free_port, run_tool
from mmengine.config import Config

from mmbeit.checkpoint import read_checkpoint

CFG = f'{ROOT}/configs/beitv2/beitv2_vit-base_300e.py'


def options(data, batch=2):
    return ['--cfg-options', f'train_dataloader.dataset.dataset.data_root={data}/imagenet',
            f'train_dataloader.dataset.dataset.indices={batch}',
            f'train_dataloader.batch_size={batch}',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'train_cfg.max_epochs=1', 'default_hooks.logger.interval=1',
            'model.target_generator.checkpoint=None']


def logged_losses(work):
    """The training lines of the run's vis_data/scalars.json (exactly one run)."""
    (path, ) = glob.glob(f'{work}/*/vis_data/scalars.json')
    return [json.loads(line) for line in open(path) if '"loss' in line]


@pytest.mark.slow  # about 40 s: a base-size run
def test_base_config_trains_one_iteration_on_cpu(tmp_path, demo_data):
    work = tmp_path / 'work'
    res = run_tool(['tools/train.py', CFG, '--work-dir', work, *options(demo_data)],
                   timeout=900)
    # the tokenizer without a checkpoint: a warning that names the key to set
    warnings = [ln for ln in (res.stdout + res.stderr).splitlines() if ' - WARNING - ' in ln]
    assert any('model.target_generator.checkpoint' in ln for ln in warnings), warnings
    (row, ) = logged_losses(work)  # one iteration: both streams' losses, finite
    assert {'loss', 'loss_1', 'loss_2', 'acc_1', 'acc_2'} <= set(row)
    assert all(math.isfinite(row[k]) for k in ('loss', 'loss_1', 'loss_2'))
    assert row['loss'] == pytest.approx(row['loss_1'] + row['loss_2'], rel=1e-3)
    state = read_checkpoint(work / 'epoch_1.pth')
    sd = state['state_dict']
    assert not any(k.startswith('target_generator.') for k in sd)
    assert sd['backbone.blocks.11.attn.qkv.weight'].shape == (2304, 768)
    assert sd['neck.cls_pt_layers.1.mlp.fc2.weight'].shape == (768, 3072)
    assert sd['head.lm_head.weight'].shape == (8192, 768)


@pytest.mark.slow  # about 45 s: a base-size run on 2 ranks
def test_base_config_on_two_cpu_ranks(tmp_path, demo_data):
    work = tmp_path / 'work'
    run_tool(['tools/dist_train.sh', CFG, '2', '--work-dir', work,
              *options(demo_data, batch=1)], env={'PORT': str(free_port())}, timeout=900)
    # the lr the run used is scaled by its total batch: 2 ranks x 1
    base = Config.fromfile(CFG)
    dumped = Config.fromfile(str(work / osp.basename(CFG)))
    assert dumped.launcher == 'pytorch'
    assert dumped.optim_wrapper.optimizer.lr == pytest.approx(
        base.optim_wrapper.optimizer.lr * 2 / base.auto_scale_lr.base_batch_size, rel=1e-9)
    (row, ) = logged_losses(work)  # one iteration of the two ranks
    assert math.isfinite(row['loss_1']) and math.isfinite(row['loss_2'])
    sd = read_checkpoint(work / 'epoch_1.pth')['state_dict']
    # DDP's wrapper is not saved: the same keys as a one-process run
    assert 'backbone.mask_token' in sd and not any(k.startswith('module.') for k in sd)
