"""Tests for LayerDecayOptimWrapperConstructor (docs/contracts.md "Layer depth")."""
import math

import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR
from mmengine.registry import init_default_scope

import mmbeit.engine  # noqa: F401  (registers the constructor)
from mmbeit.engine.optimizers import LayerDecayOptimWrapperConstructor
from mmbeit.engine.optimizers import layer_decay_constructor as ldc_module
from mmbeit.registry import OPTIM_WRAPPER_CONSTRUCTORS

DIM, HEADS, TABLE = 4, 2, 7


class TinyAttn(nn.Module):

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(DIM, DIM, bias=True)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(TABLE, HEADS))


class TinyBlock(nn.Module):

    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = TinyAttn()
        self.gamma_1 = nn.Parameter(torch.ones(DIM))


class TinyBEiT(nn.Module):
    """Two-layer stand-in with BEiTViT's parameter names and the layer-depth contract."""

    def __init__(self, depth=2):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, DIM, 2, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.blocks = nn.ModuleList([TinyBlock() for _ in range(depth)])
        self.norm = nn.LayerNorm(DIM)

    @property
    def num_layers(self):
        return len(self.blocks)

    def get_layer_depth(self, name):
        if name in ('cls_token', 'mask_token', 'pos_embed') or name.startswith('patch_embed.'):
            return 0
        if name.startswith('blocks.'):
            return int(name.split('.')[1]) + 1
        return self.num_layers + 1


class TinyClassifier(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = TinyBEiT()
        self.head = nn.Linear(DIM, 3)


# lr = 1.0 * 0.5 ** (L + 1 - id) with L = 2: id 0 -> 0.125, 1 -> 0.25, 2 -> 0.5, 3 -> 1.0
EXPECTED = {
    'backbone.cls_token': (0.125, 0.0),
    'backbone.pos_embed': (0.125, 0.0),
    'backbone.mask_token': (0.125, 0.05),
    'backbone.patch_embed.proj.weight': (0.125, 0.05),
    'backbone.patch_embed.proj.bias': (0.125, 0.0),
    'backbone.blocks.0.gamma_1': (0.25, 0.0),
    'backbone.blocks.0.norm1.weight': (0.25, 0.0),
    'backbone.blocks.0.norm1.bias': (0.25, 0.0),
    'backbone.blocks.0.attn.relative_position_bias_table': (0.25, 0.05),
    'backbone.blocks.0.attn.proj.weight': (0.25, 0.05),
    'backbone.blocks.0.attn.proj.bias': (0.25, 0.0),
    'backbone.blocks.1.gamma_1': (0.5, 0.0),
    'backbone.blocks.1.norm1.weight': (0.5, 0.0),
    'backbone.blocks.1.norm1.bias': (0.5, 0.0),
    'backbone.blocks.1.attn.relative_position_bias_table': (0.5, 0.05),
    'backbone.blocks.1.attn.proj.weight': (0.5, 0.05),
    'backbone.blocks.1.attn.proj.bias': (0.5, 0.0),
    'backbone.norm.weight': (1.0, 0.0),
    'backbone.norm.bias': (1.0, 0.0),
    'head.weight': (1.0, 0.05),
    'head.bias': (1.0, 0.0),
}


def _wrapper_cfg(**kwargs):
    cfg = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05, betas=(0.9, 0.999)))
    cfg.update(kwargs)
    return cfg


def _build(model, rate=0.5, **paramwise):
    paramwise = dict(paramwise)
    if rate is not None:
        paramwise['layer_decay_rate'] = rate
    constructor = LayerDecayOptimWrapperConstructor(_wrapper_cfg(), paramwise)
    return constructor(model)


def _table(model, optim_wrapper):
    """name -> (lr, weight_decay) as the optimizer sees it; names not in it are absent."""
    by_id = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            assert id(p) not in by_id, 'parameter in two groups'
            by_id[id(p)] = (group['lr'], group['weight_decay'])
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def _assert_table(got, expected):
    assert set(got) == set(expected)
    for name, (lr, wd) in expected.items():
        assert got[name][0] == pytest.approx(lr), name
        assert got[name][1] == pytest.approx(wd), name


def test_every_param_lr_and_wd():
    model = TinyClassifier()
    ow = _build(model)
    assert isinstance(ow, OptimWrapper)
    assert isinstance(ow.optimizer, torch.optim.AdamW)
    _assert_table(_table(model, ow), EXPECTED)
    # one group per (layer id, decay / no decay); logging keys present and consistent
    keys = [(g['layer_id'], g['weight_decay']) for g in ow.optimizer.param_groups]
    assert len(keys) == len(set(keys)) == 8
    for g in ow.optimizer.param_groups:
        assert g['lr_scale'] == pytest.approx(0.5**(2 + 1 - g['layer_id']))
        assert g['lr'] == pytest.approx(1.0 * g['lr_scale'])
        assert g['betas'] == (0.9, 0.999)


def test_model_itself_defines_depth_and_wrappers_are_unwrapped():
    backbone = TinyBEiT()
    expected = {k[len('backbone.'):]: v for k, v in EXPECTED.items() if k.startswith('backbone.')}
    _assert_table(_table(backbone, _build(backbone)), expected)
    # DDP-style wrapper: the parameters are found through .module
    model = TinyClassifier()
    wrapped = nn.DataParallel(model)
    _assert_table(_table(model, _build(wrapped)), EXPECTED)


def test_no_decay_rate_gives_equal_lr():
    for rate in (1.0, None):
        model = TinyClassifier()
        got = _table(model, _build(model, rate=rate))
        assert set(got) == set(EXPECTED)
        assert {lr for lr, _ in got.values()} == {1.0}
        for name, (_, wd) in got.items():
            assert wd == pytest.approx(EXPECTED[name][1]), name


def test_rate_one_works_without_depth_api():
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    got = _table(model, _build(model, rate=1.0))
    assert got == {'0.weight': (1.0, 0.05), '0.bias': (1.0, 0.0),
                   '1.weight': (1.0, 0.0), '1.bias': (1.0, 0.0)}


def test_frozen_params_are_skipped():
    model = TinyClassifier()
    model.backbone.pos_embed.requires_grad_(False)
    model.backbone.patch_embed.requires_grad_(False)
    ow = _build(model)
    expected = {k: v for k, v in EXPECTED.items()
                if k not in ('backbone.pos_embed', 'backbone.patch_embed.proj.weight',
                             'backbone.patch_embed.proj.bias')}
    _assert_table(_table(model, ow), expected)
    in_optim = {id(p) for g in ow.optimizer.param_groups for p in g['params']}
    assert id(model.backbone.pos_embed) not in in_optim
    assert id(model.backbone.patch_embed.proj.weight) not in in_optim


def test_extra_no_decay_names():
    model = TinyClassifier()
    got = _table(model, _build(model, no_decay_names=['relative_position_bias_table']))
    expected = dict(EXPECTED)
    expected['backbone.blocks.0.attn.relative_position_bias_table'] = (0.25, 0.0)
    expected['backbone.blocks.1.attn.relative_position_bias_table'] = (0.5, 0.0)
    _assert_table(got, expected)


def test_missing_depth_api_raises():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r'Sequential.*get_layer_depth\(name\) and num_layers'):
        _build(model, rate=0.65)


def test_bad_config_raises():
    with pytest.raises(ValueError, match='layer_decay_rate'):
        LayerDecayOptimWrapperConstructor(_wrapper_cfg(), dict(layer_decay_rate=0.0))
    with pytest.raises(ValueError, match='unsupported paramwise_cfg keys'):
        LayerDecayOptimWrapperConstructor(_wrapper_cfg(), dict(custom_keys={}))


def test_clip_grad_passes_through_and_table_is_logged(monkeypatch):
    calls = []
    monkeypatch.setattr(ldc_module, 'print_log', lambda msg, **kw: calls.append(msg))
    model = TinyClassifier()
    cfg = _wrapper_cfg(clip_grad=dict(max_norm=3.0))
    ow = LayerDecayOptimWrapperConstructor(cfg, dict(layer_decay_rate=0.5))(model)
    assert ow.clip_grad_kwargs == dict(max_norm=3.0)
    assert len(calls) == 1
    lines = calls[0].splitlines()
    assert 'layer_decay_rate=0.5' in lines[0] and 'TinyClassifier' in lines[0]
    assert len(lines) == 2 + 8  # title, header, one row per group


def _lrs(ow):
    return [g['lr'] for g in ow.optimizer.param_groups]


def _step(ow, scheduler, n):
    for _ in range(n):
        ow.step()  # the wrapper's step is the one the scheduler counts
        scheduler.step()


def test_schedulers_keep_group_ratios():
    """mmengine's CosineAnnealingLR (eta_min=0 or eta_min_ratio) and LinearLR multiply
    every group's lr by the same factor, so the layer-decay ratios survive the schedule."""
    model = TinyClassifier()
    ow = _build(model)
    start = _lrs(ow)
    scales = [g['lr_scale'] for g in ow.optimizer.param_groups]
    scheduler = CosineAnnealingLR(ow, T_max=10, by_epoch=False)
    _step(ow, scheduler, 3)
    now = _lrs(ow)
    factor = (1 + math.cos(math.pi * 3 / 10)) / 2
    for s, lr0, lr in zip(scales, start, now):
        assert lr == pytest.approx(lr0 * factor)
        assert lr / now[-1] == pytest.approx(s / scales[-1])
    assert factor < 1  # the schedule really moved

    for make in (lambda o: LinearLR(o, start_factor=1e-3, end=5, by_epoch=False),
                 lambda o: CosineAnnealingLR(o, T_max=10, eta_min_ratio=0.01, by_epoch=False)):
        ow = _build(TinyClassifier())
        start = _lrs(ow)
        scheduler = make(ow)
        _step(ow, scheduler, 3)
        now = _lrs(ow)
        assert now[-1] != pytest.approx(start[-1])
        for lr0, lr in zip(start, now):
            assert lr / now[-1] == pytest.approx(lr0 / start[-1])


def test_absolute_eta_min_bends_ratios():
    """Documented caveat: an absolute eta_min is one floor shared by all groups."""
    ow = _build(TinyClassifier())
    scheduler = CosineAnnealingLR(ow, T_max=10, eta_min=0.1, by_epoch=False)
    _step(ow, scheduler, 10)
    assert set(round(lr, 6) for lr in _lrs(ow)) == {0.1}


def test_build_from_config_under_mmbeit_scope():
    init_default_scope('mmbeit')
    model = TinyClassifier()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(type='LayerDecayOptimWrapperConstructor', optim_wrapper_cfg=_wrapper_cfg(),
             paramwise_cfg=dict(layer_decay_rate=0.5)))
    assert isinstance(constructor, LayerDecayOptimWrapperConstructor)
    _assert_table(_table(model, constructor(model)), EXPECTED)

    # the runner path: mmengine's build_optim_wrapper with `constructor` in the config
    model = TinyClassifier()
    cfg = _wrapper_cfg(constructor='LayerDecayOptimWrapperConstructor',
                       paramwise_cfg=dict(layer_decay_rate=0.5), clip_grad=dict(max_norm=3.0))
    ow = build_optim_wrapper(model, cfg)
    assert isinstance(ow, OptimWrapper)
    _assert_table(_table(model, ow), EXPECTED)
