"""Pretraining -> downstream, end to end through the tools (issue 6): a tiny BEiT v2
pretraining run writes a checkpoint; the demo fine-tuning and segmentation configs start
from that file as written (no conversion), train a few iterations, save, and
tools/test.py reports top-1 / mIoU for the saved model. Each run is a fresh process."""
import re

import pytest
import torch
from _helpers import ROOT, run_tool

import mmbeit  # noqa: F401  (weights-only loading of mmengine checkpoints)

DEMO = f'{ROOT}/configs/demo'


def _common(max_iters, interval):
    return f'''
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters},
                 val_interval={max_iters})
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0,
                        end={max_iters})]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval={interval}, max_keep_ckpts=-1,
                                     save_best=None))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
'''


@pytest.fixture(scope='module')
def pretrain_ckpt(tmp_path_factory, demo_data):
    """Two iterations of the demo BEiT v2 pretraining (random-weight tokenizer)."""
    tmp = tmp_path_factory.mktemp('pretrain')
    cfg = tmp / 'pretrain.py'
    cfg.write_text(f'''
_base_ = '{DEMO}/beitv2_vit-tiny-p8_vqkd-demo_30e_demo-64.py'
_pipe = {{{{_base_.train_pipeline}}}}
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=dict(
    datasets=[dict(type='UnlabeledImageFolder', data_root='{demo_data}/imagenet/train',
                   pipeline=_pipe),
              dict(type='UnlabeledImageFolder', data_root='{demo_data}/ade20k/images/training',
                   pipeline=_pipe)]))
''' + _common(2, 2))
    run_tool(['tools/train.py', cfg, '--work-dir', tmp / 'work'])
    ckpt = tmp / 'work' / 'iter_2.pth'
    assert ckpt.exists()
    return ckpt


def _state(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def test_finetune_from_the_pretraining_checkpoint_then_test(tmp_path, demo_data, pretrain_ckpt):
    imagenet = f'{demo_data}/imagenet'
    cfg = tmp_path / 'ft.py'
    cfg.write_text(f'''
_base_ = '{DEMO}/beitv2_vit-tiny-p8_ft-30e_demo-64.py'
model = dict(backbone=dict(init_cfg=dict(checkpoint='{pretrain_ckpt}')))
_data = dict(data_root='{imagenet}', metainfo=dict(classes='{imagenet}/meta/classes.txt'))
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=_data)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False, dataset=_data)
test_dataloader = val_dataloader
''' + _common(3, 3))
    work = tmp_path / 'work'
    out = run_tool(['tools/train.py', cfg, '--work-dir', work])
    log = out.stdout + out.stderr
    assert 'BEiTViT load: expanded the shared rel_pos_bias.relative_position_bias_table ' \
           'into 4 per-layer tables' in log
    n = sum(k.startswith('backbone.') for k in _state(pretrain_ckpt))
    assert f"loaded {n} tensors from {pretrain_ckpt} (prefix 'backbone.'); left at their " \
           'init: fc_norm.weight, fc_norm.bias' in log
    # the fine-tuning run's checkpoint: classifier keys only, started from the pretraining
    pre, ft = _state(pretrain_ckpt), _state(work / 'iter_3.pth')
    assert not any(k.startswith(('neck.', 'head.lm_head')) for k in ft)
    assert 'backbone.mask_token' not in ft and 'backbone.fc_norm.weight' in ft
    assert ft['head.fc.weight'].shape == (8, 128)
    # 3 steps at a layer-decayed lr move the weights only a little from the pretraining
    drift = (ft['backbone.blocks.0.mlp.fc1.weight'] - pre['backbone.blocks.0.mlp.fc1.weight'])
    assert 0 < drift.abs().max() < 0.05
    res = run_tool(['tools/test.py', cfg, work / 'iter_3.pth', '--work-dir', tmp_path / 'ev'])
    top1 = re.search(r'accuracy/top1: ([\d.]+)', res.stdout + res.stderr)
    assert top1 and 0.0 <= float(top1.group(1)) <= 100.0


def test_segmentation_from_the_pretraining_checkpoint_then_test(tmp_path, demo_data,
                                                                 pretrain_ckpt):
    ade = f'{demo_data}/ade20k'
    cfg = tmp_path / 'seg.py'
    cfg.write_text(f'''
_base_ = '{DEMO}/beitv2_vit-tiny-p8_upernet-1k_demo-ade-128.py'
model = dict(backbone=dict(init_cfg=dict(checkpoint='{pretrain_ckpt}')))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{ade}'))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='{ade}'))
test_dataloader = val_dataloader
''' + _common(2, 2))
    work = tmp_path / 'work'
    out = run_tool(['tools/train.py', cfg, '--work-dir', work])
    log = out.stdout + out.stderr
    # SyncBN of the config cannot run in one CPU process: BN, and the log says where
    assert re.search(r'SyncBN needs CUDA and several processes; using BN instead in a CPU '
                     r'run for: .*neck\.norm_cfg.*decode_head\.norm_cfg', log)
    # 64 px pretraining (8 x 8) -> 128 px segmentation backbone (16 x 16)
    assert 'resized 4 relative position table(s) from grid (8, 8) to (16, 16)' in log
    seg = _state(work / 'iter_2.pth')
    assert seg['backbone.blocks.0.attn.relative_position_bias_table'].shape == (31 * 31 + 3, 4)
    assert seg['decode_head.fpn_bottleneck.bn.running_mean'].shape == (64, )  # BN
    assert seg['neck.upsample_2x.0.weight'].shape == (128, 128, 2, 2)  # stride 8 -> 4
    assert seg['decode_head.conv_seg.weight'].shape == (8, 64, 1, 1)
    res = run_tool(['tools/test.py', cfg, work / 'iter_2.pth', '--work-dir', tmp_path / 'ev'])
    miou = re.search(r'mIoU: ([\d.]+)', res.stdout + res.stderr)
    assert miou and 0.0 <= float(miou.group(1)) <= 100.0
