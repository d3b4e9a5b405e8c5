"""BEiT v2 pretraining through the user-facing tools, at the real base size, on CPU:
``tools/train.py configs/beitv2/beitv2_vit-base_300e.py`` and the same through
``tools/dist_train.sh`` with 2 gloo ranks, pointed at the generated demo data for one
iteration each (the tokenizer keeps random weights and the log says so)."""
from _helpers import ROOT, free_port, run_tool

from mmbeit.checkpoint import read_checkpoint

CFG = f'{ROOT}/configs/beitv2/beitv2_vit-base_300e.py'


def options(data, batch=2):
    return ['--cfg-options', f'train_dataloader.dataset.dataset.data_root={data}/imagenet',
            f'train_dataloader.dataset.dataset.indices={batch}',
            f'train_dataloader.batch_size={batch}',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'train_cfg.max_epochs=1', 'default_hooks.logger.interval=1',
            'model.target_generator.checkpoint=None']


def test_base_config_trains_one_iteration_on_cpu(tmp_path, demo_data):
    work = tmp_path / 'work'
    res = run_tool(['tools/train.py', CFG, '--work-dir', work, *options(demo_data)],
                   timeout=900)
    log = res.stdout + res.stderr
    assert 'keeps RANDOM weights' in log
    assert 'loss_1:' in log and 'loss_2:' in log and 'acc_1:' in log
    state = read_checkpoint(work / 'epoch_1.pth')
    sd = state['state_dict']
    assert not any(k.startswith('target_generator.') for k in sd)
    assert sd['backbone.blocks.11.attn.qkv.weight'].shape == (2304, 768)
    assert sd['neck.cls_pt_layers.1.mlp.fc2.weight'].shape == (768, 3072)
    assert sd['head.lm_head.weight'].shape == (8192, 768)


def test_base_config_on_two_cpu_ranks(tmp_path, demo_data):
    work = tmp_path / 'work'
    res = run_tool(['tools/dist_train.sh', CFG, '2', '--work-dir', work,
                    *options(demo_data, batch=1)],
                   env={'PORT': str(free_port())}, timeout=900)
    log = res.stdout + res.stderr
    assert 'loss_1:' in log and 'MMDistributedDataParallel' in log
    assert (work / 'epoch_1.pth').exists()
