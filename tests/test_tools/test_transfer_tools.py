"""Pretraining -> downstream, end to end through the tools (issue 6): a tiny run of the
demo pretraining (HOG codebook fitted, then BEiT v2's algorithm on its tokens) writes a
checkpoint; the demo fine-tuning and segmentation configs start from that file as
written (no conversion), train a few iterations, save, and tools/test.py reports top-1 /
mIoU for the saved model. Each run is a fresh process."""
import json
import re

import numpy as np
import pytest
import torch
from _helpers import ROOT, run_tool
from mmengine.config import Config

from mmbeit.checkpoint import read_checkpoint

DEMO = f'{ROOT}/configs/demo'
# training runs through the tools: 20-45 s each here (the pretraining fixture included)
pytestmark = pytest.mark.slow


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


def write_hog_pretrain_config(path, demo_data, extra=''):
    """The demo pretraining config (HOG tokens), on the small generated data."""
    path.write_text(f'''
_base_ = '{DEMO}/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py'
_pipe = {{{{_base_.train_pipeline}}}}
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=dict(
    dataset=dict(datasets=[
        dict(type='UnlabeledImageFolder', data_root='{demo_data}/imagenet/train',
             pipeline=_pipe),
        dict(type='UnlabeledImageFolder', data_root='{demo_data}/ade20k/images/training',
             pipeline=_pipe)])))
# the demo's kNN monitor is epoch-based and reads data/demo: not for 2 iterations here
custom_hooks = []
''' + extra)
    return path


@pytest.fixture(scope='module')
def pretrain_ckpt(tmp_path_factory, demo_data):
    """The demo's pretraining as run_demo.sh runs it, shortened: the HOG codebook fitted
    by tools/misc/fit_hog_tokenizer.py, then two iterations of pretraining on its tokens."""
    tmp = tmp_path_factory.mktemp('pretrain')
    cfg = write_hog_pretrain_config(tmp / 'pretrain.py', demo_data, _common(2, 2))
    run_tool(['tools/misc/fit_hog_tokenizer.py', cfg, '--out', tmp / 'hog.pth',
              '--views', '1'])
    res = run_tool(['tools/train.py', cfg, '--work-dir', tmp / 'work', '--cfg-options',
                    f'model.target_generator.checkpoint={tmp / "hog.pth"}'])
    # the run's tokenizer read the fitted codebook: its config (dumped by the run) names
    # the file, and no warning of a tokenizer left random names the key
    ran = Config.fromfile(tmp / 'work' / 'pretrain.py')
    assert ran.model.target_generator.checkpoint == str(tmp / 'hog.pth')
    assert not [ln for ln in (res.stdout + res.stderr).splitlines()
                if ' - WARNING - ' in ln and 'target_generator' in ln]
    ckpt = tmp / 'work' / 'iter_2.pth'
    assert ckpt.exists()
    return ckpt


def _state(path):
    return read_checkpoint(path)['state_dict']


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
    run_tool(['tools/train.py', cfg, '--work-dir', work])
    # the fine-tuning run's checkpoint: classifier keys only, started from the pretraining
    pre, ft = _state(pretrain_ckpt), _state(work / 'iter_3.pth')
    # one shared table written, one per block read (the demo fine-tuning uses per-layer
    # tables); fc_norm is not in the pretraining file and starts as a fresh LayerNorm
    assert 'backbone.rel_pos_bias.relative_position_bias_table' in pre
    assert all(f'backbone.blocks.{i}.attn.relative_position_bias_table' in ft
               for i in range(4))
    assert 'backbone.fc_norm.weight' not in pre
    assert (ft['backbone.fc_norm.weight'] - 1).abs().max() < 0.05
    assert ft['backbone.fc_norm.bias'].abs().max() < 0.05
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
    run_tool(['tools/train.py', cfg, '--work-dir', work])
    # SyncBN of the config cannot run in one CPU process: the run's config has BN there
    assert Config.fromfile(cfg).model.neck.norm_cfg.type == 'SyncBN'
    ran = Config.fromfile(work / 'seg.py').model
    assert (ran.neck.norm_cfg.type, ran.decode_head.norm_cfg.type) == ('BN', 'BN')
    # 64 px pretraining (8 x 8) -> 128 px segmentation backbone (16 x 16): resized tables
    seg = _state(work / 'iter_2.pth')
    assert seg['backbone.blocks.0.attn.relative_position_bias_table'].shape == (31 * 31 + 3, 4)
    assert seg['decode_head.fpn_bottleneck.bn.running_mean'].shape == (64, )  # BN
    assert seg['neck.upsample_2x.0.weight'].shape == (128, 128, 2, 2)  # stride 8 -> 4
    assert seg['decode_head.conv_seg.weight'].shape == (8, 64, 1, 1)
    res = run_tool(['tools/test.py', cfg, work / 'iter_2.pth', '--work-dir', tmp_path / 'ev'])
    miou = re.search(r'mIoU: ([\d.]+)', res.stdout + res.stderr)
    assert miou and 0.0 <= float(miou.group(1)) <= 100.0


def test_fit_hog_tokenizer_tool(tmp_path, demo_data):
    """The codebook file: what the tool says and writes, tokens it gives, and what it
    refuses (an existing file is kept byte for byte; a VQ-KD config is named)."""
    from mmbeit.models.tokenizers import HOGTokenizer
    cfg = write_hog_pretrain_config(tmp_path / 'pretrain.py', demo_data)
    out = tmp_path / 'hog.pth'
    res = run_tool(['tools/misc/fit_hog_tokenizer.py', cfg, '--out', out, '--views', '2'])
    n_images = 8 * 8 + 8                         # demo_data: classification + scene images
    m = re.search(r'(\d+) images x 2 views = (\d+) views, (\d+) patches; flat \(token 0\): '
                  r'([\d.]+)%; tokens used (\d+)% of 64', res.stdout)
    assert m, res.stdout
    assert [int(m[i]) for i in (1, 2, 3)] == [n_images, 2 * n_images, 2 * n_images * 64]
    assert 30 < float(m[4]) < 90 and int(m[5]) > 50
    ckpt = read_checkpoint(out)
    assert ckpt['meta']['hog_tokenizer'] == dict(num_tokens=64, patch_size=8, cell_size=4,
                                                 bins=9, flat_threshold=0.05)
    tok = HOGTokenizer(num_tokens=64, input_size=64, checkpoint=str(out))
    tok.init_weights()
    assert torch.allclose(tok.codebook.norm(dim=1), torch.ones(63))
    flat = tok.tokenize(torch.full((1, 3, 64, 64), 0.5))
    assert flat.unique().tolist() == [0]
    # the tokenizer analysis tool reads the same file
    run_tool(['tools/analysis_tools/tokenize_images.py', cfg, f'{demo_data}/imagenet/val',
              '--checkpoint', out, '--out-dir', tmp_path / 'tokens'])
    tokens = np.load(tmp_path / 'tokens' / 'tokens.npy')
    usage = json.loads((tmp_path / 'tokens' / 'usage.json').read_text())
    assert tokens.shape == (8 * 2, 64) and tokens.min() >= 0 and tokens.max() < 64
    assert usage['counts'] == np.bincount(tokens.ravel(), minlength=64).tolist()

    before = out.read_bytes()
    res = run_tool(['tools/misc/fit_hog_tokenizer.py', cfg, '--out', out], check=False)
    assert res.returncode == 1 and str(out) in res.stderr and '--force' in res.stderr
    assert out.read_bytes() == before
    vqkd = f'{DEMO}/beitv2_vit-tiny-p8_vqkd-demo_30e_demo-64.py'
    res = run_tool(['tools/misc/fit_hog_tokenizer.py', vqkd, '--out', tmp_path / 'x.pth'],
                   check=False)
    assert res.returncode == 1
    assert "model.target_generator is 'VQKD', not a HOGTokenizer" in res.stderr
    assert not (tmp_path / 'x.pth').exists()
