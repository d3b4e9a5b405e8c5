"""Linear lr scaling to the total batch (mmbeit.engine.lr_scaling) and gradient
accumulation through the pretraining algorithm's train_step.

The scaling is checked on plain configs and on the recipe configs as users run them; the
accumulation test compares one optimizer step over two half batches (K=2) with one step
over the full batch."""
import re

import pytest
import torch
from _helpers import ROOT
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmbeit.engine.lr_scaling import format_lr, scale_lr_in_config, total_batch, world_size_from_env

pytestmark = pytest.mark.usefixtures('one_thread')


def config(lr=2e-3, batch=4, base=32, accumulate=None, auto_extra=None, schedulers=None):
    wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=lr))
    if accumulate is not None:
        wrapper['accumulative_counts'] = accumulate
    cfg = dict(train_dataloader=dict(batch_size=batch), optim_wrapper=wrapper,
               param_scheduler=schedulers or [])
    if base is not None:
        cfg['auto_scale_lr'] = dict(base_batch_size=base, **(auto_extra or {}))
    return Config(cfg)


def parse(line):
    """(processes, per-process batch, accumulation or None, total, lr text, source)."""
    m = re.fullmatch(r'total batch (\d+) x (\d+)(?: x (\d+))? = (\d+); lr (.+?) \((.+)\)',
                     line)
    assert m, line
    n, b, k, total, lr, source = m.groups()
    return int(n), int(b), k and int(k), int(total), lr, source


def test_single_process_scales_lr_and_absolute_floors_only():
    schedulers = [
        dict(type='LinearLR', start_factor=1e-3, begin=0, end=3),
        dict(type='CosineAnnealingLR', eta_min=1e-5, begin=3, end=30),
        dict(type='mmengine.PolyLR', eta_min=0, begin=30, end=40),
        dict(type='CosineRestartLR', eta_min_ratio=0.01, periods=[5], restart_weights=[1]),
        dict(type='CosineAnnealingParamScheduler', param_name='lr', eta_min=2e-5),
        # momentum, not lr: stays
        dict(type='CosineAnnealingMomentum', eta_min=0.85, begin=0, end=30),
        dict(type='CosineAnnealingParamScheduler', param_name='weight_decay', eta_min=0.1),
    ]
    cfg = config(lr=2e-3, batch=4, base=32, schedulers=schedulers)
    line = scale_lr_in_config(cfg, world_size=1)
    ratio = 4 / 32
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(2e-3 * ratio, rel=1e-12)
    s = cfg.param_scheduler
    assert s[0].start_factor == 1e-3
    assert s[1].eta_min == pytest.approx(1e-5 * ratio, rel=1e-12)
    assert s[2].eta_min == 0
    assert s[3].eta_min_ratio == 0.01 and 'eta_min' not in s[3]
    assert s[4].eta_min == pytest.approx(2e-5 * ratio, rel=1e-12)
    assert s[5].eta_min == 0.85 and s[6].eta_min == 0.1
    # mmengine must not scale again
    assert cfg.auto_scale_lr.enable is False and cfg.auto_scale_lr.base_batch_size == 32
    n, b, k, total, lr, source = parse(line)
    assert (n, b, k, total) == (1, 4, None, 4)
    assert lr == f'{format_lr(2.5e-4)} = {format_lr(2e-3)} x 4 / 32'
    assert source.startswith('linear scaling from auto_scale_lr.base_batch_size=32')
    assert 'CosineAnnealingLR.eta_min 1e-05 -> 1.25e-06' in source


def test_accumulation_counts_in_the_total_batch():
    cfg = config(lr=1.5e-3, batch=128, base=2048, accumulate=2)
    assert total_batch(cfg, 8) == (128, 2, 2048)
    line = scale_lr_in_config(cfg, world_size=8)
    *numbers, source = parse(line)
    assert numbers == [8, 128, 2, 2048, '1.5e-03 = 1.5e-03 x 2048 / 2048']
    assert 'auto_scale_lr.base_batch_size=2048' in source  # where the base batch came from
    assert cfg.optim_wrapper.optimizer.lr == 1.5e-3
    cfg = config(lr=1.5e-3, batch=128, base=2048, accumulate=2)
    scale_lr_in_config(cfg, world_size=2)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1.5e-3 * 512 / 2048)


@pytest.mark.parametrize('cfg, off_by, why', [
    (config(base=None), None, 'auto_scale_lr.base_batch_size'),
    (config(auto_extra=dict(enable=False)), None, 'auto_scale_lr.enable=False'),
    (config(), '--no-scale-lr', '--no-scale-lr'),
    (config(auto_extra=dict(enable=True)), '--no-scale-lr', '--no-scale-lr'),
])
def test_config_lr_kept(cfg, off_by, why):
    """The config lr is kept; the line reports it and names what kept it."""
    line = scale_lr_in_config(cfg, world_size=2, off_by=off_by)
    assert cfg.optim_wrapper.optimizer.lr == 2e-3
    n, b, k, total, lr, source = parse(line)
    assert (n, b, k, total) == (2, 4, None, 8)
    assert float(lr.split()[0]) == 2e-3 and why in source
    if cfg.get('auto_scale_lr'):
        assert cfg.auto_scale_lr.enable is False


def test_dumped_config_is_not_scaled_twice(tmp_path):
    cfg = config(lr=2e-3, batch=4, base=32, schedulers=[
        dict(type='CosineAnnealingLR', eta_min=1e-5, begin=0, end=3)])
    scale_lr_in_config(cfg, world_size=2)
    cfg.dump(tmp_path / 'dumped.py')
    again = Config.fromfile(tmp_path / 'dumped.py')
    line = scale_lr_in_config(again, world_size=2)
    assert again.optim_wrapper.optimizer.lr == pytest.approx(2e-3 * 8 / 32)
    assert again.param_scheduler[0].eta_min == pytest.approx(1e-5 * 8 / 32)
    # the line reports the lr the run uses: the once-scaled one
    n, b, k, total, lr, _ = parse(line)
    assert (n, b, k, total) == (2, 4, None, 8)
    assert float(lr.split()[0]) == pytest.approx(2e-3 * 8 / 32)


@pytest.mark.parametrize('gpus, accumulate, lr', [(16, None, 1.5e-3), (8, 2, 1.5e-3),
                                                  (8, None, 7.5e-4), (1, None, 9.375e-5)])
@pytest.mark.parametrize('name', ['beitv2/beitv2_vit-base_300e.py',
                                  'beitv2/beitv2_vit-large_1600e.py',
                                  'beit/beit_vit-base_800e.py'])
def test_recipe_configs(name, gpus, accumulate, lr):
    """The recipe commands of the README: 16 GPUs, or 8 with --accumulate 2, reproduce
    the recipe's 1.5e-3 for batch 2048; other totals follow it linearly."""
    cfg = Config.fromfile(f'{ROOT}/configs/{name}')
    if accumulate:
        cfg.optim_wrapper.accumulative_counts = accumulate
    ratios = [s.get('eta_min_ratio') for s in cfg.param_scheduler]
    line = scale_lr_in_config(cfg, world_size=gpus)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(lr, rel=1e-12)
    assert [s.get('eta_min_ratio') for s in cfg.param_scheduler] == ratios
    assert parse(line)[:4] == (gpus, 128, accumulate, gpus * 128 * (accumulate or 1))


@pytest.mark.parametrize('cfg, message', [
    (config(accumulate=0), 'optim_wrapper.accumulative_counts must be a positive integer'),
    (config(accumulate=1.5), 'optim_wrapper.accumulative_counts must be a positive integer'),
    (config(base=0), 'auto_scale_lr.base_batch_size must be a positive integer, got 0'),
    (Config(dict(optim_wrapper=dict(optimizer=dict(lr=1.0)), train_dataloader=dict())),
     'train_dataloader.batch_size is not set'),
    (Config(dict(optim_wrapper=dict(optimizer=dict(lr=1.0)),
                 train_dataloader=dict(batch_size=2), auto_scale_lr=dict(enable=True))),
     'auto_scale_lr.enable=True but auto_scale_lr has no base_batch_size'),
    (Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW')),
                 train_dataloader=dict(batch_size=2), auto_scale_lr=dict(base_batch_size=4))),
     'optim_wrapper.optimizer.lr is not set'),
])
def test_bad_configs(cfg, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        scale_lr_in_config(cfg, world_size=1)


def test_world_size_from_launcher_environment():
    assert world_size_from_env('none', {'WORLD_SIZE': '8'}) == 1
    assert world_size_from_env('pytorch', {'WORLD_SIZE': '16'}) == 16
    assert world_size_from_env('slurm', {'SLURM_NTASKS': '8', 'WORLD_SIZE': '1'}) == 8
    with pytest.raises(RuntimeError, match='WORLD_SIZE=None .* tools/dist_train.sh'):
        world_size_from_env('pytorch', {})
    with pytest.raises(RuntimeError, match="SLURM_NTASKS='0' .* srun"):
        world_size_from_env('slurm', {'SLURM_NTASKS': '0'})


def test_format_lr_reads_back():
    for v in (1.5e-3, 7.5e-4, 1e-3, 9.375e-5, 1 / 3):
        assert float(format_lr(v)) == v
    assert format_lr(1e-3) == '1e-03' and format_lr(1.5e-3) == '1.5e-03'


# ---------------------------------------------------------------------------------------
# gradient accumulation through BEiT.train_step and the layer-decay constructor
# ---------------------------------------------------------------------------------------
TINY = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)


def pretrain_model():
    from mmbeit.registry import MODELS
    cfg = dict(
        type='BEiT',
        backbone=dict(type='BEiTViT', arch=TINY, img_size=32, patch_size=8,
                      use_mask_token=True, final_norm=True, rel_pos_bias='shared',
                      out_type='raw', drop_path_rate=0.0),
        neck=dict(type='BEiTV2Neck', early_layers=1, num_layers=1, embed_dims=32,
                  num_heads=4, feedforward_channels=64, backbone_layers=2),
        head=dict(type='MIMHead', in_channels=32, vocab_size=16),
        target_generator=dict(type='VQKD', encoder=dict(arch=dict(TINY, num_layers=1),
                                                        img_size=32, patch_size=8),
                              with_decoder=False,
                              quantizer=dict(num_tokens=16, embed_dims=8)))
    with DefaultScope.overwrite_default_scope('mmbeit'):
        torch.manual_seed(0)
        model = MODELS.build(cfg)
        model.init_weights()
    # no data preprocessor config: the default one passes the ready tensors through
    return model


def pretrain_data(b=4, masked=8, seed=0):
    """Two views and a mask with exactly ``masked`` of 16 patches per image, so the mean
    over a half batch's masked tokens is a mean over the same number of tokens."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(b, 3, 32, 32, generator=g)
    target = torch.rand(b, 3, 32, 32, generator=g)
    mask = torch.zeros(b, 16, dtype=torch.bool)
    for i in range(b):
        mask[i, torch.randperm(16, generator=g)[:masked]] = True
    return dict(inputs=inputs, target_inputs=target, mask=mask)


def one_step(model, data, accumulate, optimizer, clip):
    from mmbeit.registry import OPTIM_WRAPPER_CONSTRUCTORS
    wrapper_cfg = dict(type='OptimWrapper', optimizer=optimizer, accumulative_counts=accumulate)
    if clip:
        wrapper_cfg['clip_grad'] = dict(max_norm=clip)
    with DefaultScope.overwrite_default_scope('mmbeit'):
        constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
            type='LayerDecayOptimWrapperConstructor', optim_wrapper_cfg=wrapper_cfg,
            paramwise_cfg=dict(layer_decay_rate=0.9)))
        wrapper = constructor(model)
    wrapper.initialize_count_status(model, 0, accumulate)   # what the train loop does
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    size = len(data['inputs']) // accumulate
    for i in range(accumulate):
        part = {k: v[i * size:(i + 1) * size] for k, v in data.items()}
        model.train_step(part, wrapper)
        changed = any(not torch.equal(before[k], v) for k, v in model.named_parameters())
        assert changed == (i == accumulate - 1)   # no step before the K-th micro-batch
    return {k: v.detach() for k, v in model.named_parameters()}


@pytest.mark.parametrize('optimizer, clip', [
    # SGD: the update is proportional to the gradient, so a wrong loss scale shows
    (dict(type='SGD', lr=0.5), None),
    # the recipe's optimiser and clipping
    (dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.98), weight_decay=0.05), 3.0),
])
def test_two_half_batches_make_one_full_batch_step(optimizer, clip):
    data = pretrain_data()
    full = one_step(pretrain_model(), data, 1, optimizer, clip)
    accumulated = one_step(pretrain_model(), data, 2, optimizer, clip)
    start = dict(pretrain_model().named_parameters())
    moved = 0
    for k, v in full.items():
        torch.testing.assert_close(accumulated[k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved += not torch.equal(v, start[k])
    assert moved > 10
