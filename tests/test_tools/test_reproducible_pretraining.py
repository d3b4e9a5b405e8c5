"""Pretraining randomness through the user-facing tools, on CPU: two ranks launched with
``tools/dist_train.sh`` train on different masks, which are exactly the masks the same
seed gives in one process; and a run interrupted and resumed ends with bit-identical
weights to the uninterrupted run (crops, flips, jitter, masks and drop path replayed)."""

import pytest
import torch
from _helpers import ROOT, free_port, run_tool

from mmbeit.checkpoint import read_checkpoint

# training runs through the tools: about 12 s (two ranks) and 23 s (three runs) here
pytestmark = pytest.mark.slow

PIPELINE = """[
    dict(type='mmbeit.LoadImageRGB'),
    dict(type='mmbeit.BEiTMaskedViews', img_size=64, target_size=64, scale=(0.2, 1.0),
         interpolation='bicubic', target_interpolation='bicubic'),
    dict(type='mmbeit.MIMMask', patch_size=8,
         generator=dict(type='BlockwiseMaskGenerator', mask_ratio=0.4, min_num_patches=4)),
    dict(type='mmbeit.PackMIMInputs'),
]"""

PROBE = '''
import torch
from mmengine.hooks import Hook
from mmbeit.registry import HOOKS


@HOOKS.register_module()
class DumpInputsHook(Hook):
    def __init__(self, out):
        self.out, self.seen = out, []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seen.append([x.clone() for x in data_batch['inputs']])

    def after_train(self, runner):
        torch.save(self.seen, f'{self.out}/inputs_rank{runner.rank}.pt')
'''


def write_config(tmp_path, data, workers=2, batch=4, images=16, extra=''):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f"""_base_ = ['{ROOT}/configs/demo/beitv2_vit-tiny-p8_vqkd-demo_30e_demo-64.py']
train_dataloader = dict(
    batch_size={batch}, num_workers={workers}, persistent_workers={workers > 0},
    dataset=dict(dataset=dict(
        _delete_=True, type='UnlabeledImageFolder', data_root='{data}/imagenet/train',
        indices={images}, pipeline={PIPELINE})))
model = dict(backbone=dict(drop_path_rate=0.2), target_generator=dict(checkpoint=None))
# schedule ends fixed in epochs, so that a 1-epoch run continued to 2 equals a 2-epoch run
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=1, end=2,
         convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3), logger=dict(interval=1))
{extra}""")
    return cfg


def weights(path):
    return read_checkpoint(path)['state_dict']


def test_two_ranks_draw_different_masks_equal_to_the_one_process_stream(tmp_path, demo_data):
    (tmp_path / 'probe_hook.py').write_text(PROBE)
    extra = (f"custom_imports = dict(imports=['probe_hook'], allow_failed_imports=False)\n"
             f"custom_hooks = [dict(type='DumpInputsHook', out='{tmp_path}')]\n"
             'train_cfg = dict(max_epochs=1)\n')
    cfg = write_config(tmp_path, demo_data, workers=1, batch=2, images=8, extra=extra)
    run_tool(['tools/dist_train.sh', cfg, '2', '--work-dir', tmp_path / 'work'],
             env={'PORT': str(free_port()), 'PYTHONPATH': f'{ROOT}:{tmp_path}'})
    r0, r1 = (torch.load(tmp_path / f'inputs_rank{r}.pt', weights_only=True) for r in (0, 1))
    assert len(r0) == len(r1) == 2  # 8 images / (2 ranks x 2)
    masks0 = torch.cat([b[2] for b in r0])
    masks1 = torch.cat([b[2] for b in r1])
    assert masks0.shape == (4, 64) and (masks0.sum(1) == 26).all()  # round(0.4 * 64)
    assert not any(torch.equal(a, b) for a in masks0 for b in masks1)

    # the same seed in one process, without the tools: position p went to rank p % 2
    from mmengine.registry import DefaultScope

    from mmbeit.datasets import SeededDataset, SeededSampler, UnlabeledImageFolder
    with DefaultScope.overwrite_default_scope('mmbeit'):
        ds = SeededDataset(UnlabeledImageFolder(
            data_root=f'{demo_data}/imagenet/train', indices=8,
            pipeline=eval(PIPELINE.replace('mmbeit.', ''))))
    stream = [ds[key]['inputs'] for key in SeededSampler(ds, seed=0)]
    got = [sample for k in range(2) for j in range(2)
           for sample in ([x[j] for x in r0[k]], [x[j] for x in r1[k]])]
    assert len(got) == len(stream) == 8
    for a, b in zip(got, stream):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_resumed_run_ends_bit_identical_to_the_uninterrupted_one(tmp_path, demo_data):
    cfg = write_config(tmp_path, demo_data)
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    run_tool(['tools/train.py', cfg, '--work-dir', straight,
              '--cfg-options', 'train_cfg.max_epochs=2'])
    run_tool(['tools/train.py', cfg, '--work-dir', split,
              '--cfg-options', 'train_cfg.max_epochs=1'])
    run_tool(['tools/train.py', cfg, '--work-dir', split, '--resume',
              '--cfg-options', 'train_cfg.max_epochs=2'])
    a, b = weights(straight / 'epoch_2.pth'), weights(split / 'epoch_2.pth')
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and training moved the weights between the two epochs
    first = weights(split / 'epoch_1.pth')
    assert not torch.equal(first['backbone.blocks.0.attn.qkv.weight'],
                           a['backbone.blocks.0.attn.qkv.weight'])
