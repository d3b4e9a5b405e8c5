"""Tests for MixedPrecisionOptimWrapper (mmbeit/engine/optimizers/mixed_precision.py) and
the fused-AdamW rule of LayerDecayOptimWrapperConstructor.

Each update is compared with the same update written out by hand (torch.autocast around
the forward, loss / accumulation factor, clip_grad_norm_, AdamW), so the wrapper is
checked for what it computes, not only for running."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mmbeit.engine  # noqa: F401  (registers the wrapper and the constructor)
from mmbeit.engine.optimizers import MixedPrecisionOptimWrapper, resolve_amp_dtype
from mmbeit.engine.optimizers import layer_decay_constructor as ldc_module
from mmbeit.registry import OPTIM_WRAPPERS

pytestmark = pytest.mark.usefixtures('one_thread')


class Net(nn.Module):
    """Linear -> GELU -> Linear, with a LayerNorm that autocast keeps in fp32 on CPU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.norm(F.gelu(self.fc1(x))))


def loss_of(model, x, y):
    return F.cross_entropy(model(x).float(), y)


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 8, generator=g), torch.randint(0, 4, (6, ), generator=g))
            for _ in range(n)]


def build(model, **wrapper):
    init_default_scope('mmbeit')
    cfg = dict(type='MixedPrecisionOptimWrapper',
               optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05),
               constructor='LayerDecayOptimWrapperConstructor', **wrapper)
    return build_optim_wrapper(model, cfg)


def run_wrapper(wrapper, model, data):
    for x, y in data:
        with wrapper.optim_context(model):
            loss = loss_of(model, x, y)
        wrapper.update_params(loss)


# ---------------------------------------------------------------------------------------
# dtype and construction
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('name, dtype', [(None, torch.bfloat16), ('bf16', torch.bfloat16),
                                         ('bfloat16', torch.bfloat16),
                                         (torch.bfloat16, torch.bfloat16),
                                         ('fp16', torch.float16), ('float16', torch.float16),
                                         ('FP16', torch.float16)])
def test_resolve_amp_dtype(name, dtype):
    assert resolve_amp_dtype(name) is dtype


@pytest.mark.parametrize('bad', ['float32', 'int8', torch.float32])
def test_bad_dtype_names_the_choices(bad):
    with pytest.raises(ValueError, match=r"dtype=.* is not an autocast dtype; use 'bfloat16'"):
        resolve_amp_dtype(bad)


def test_built_by_the_layer_decay_constructor_with_its_settings():
    model = Net()
    wrapper = build(model, clip_grad=dict(max_norm=1.0), accumulative_counts=2)
    assert type(wrapper) is MixedPrecisionOptimWrapper
    assert OPTIM_WRAPPERS.get('MixedPrecisionOptimWrapper') is MixedPrecisionOptimWrapper
    assert wrapper.cast_dtype is torch.bfloat16 and wrapper.loss_scaler is None
    assert wrapper.clip_grad_kwargs == dict(max_norm=1.0)
    assert wrapper._accumulative_counts == 2
    # the layer-decay groups are there (decay / no-decay split of the constructor)
    assert {g['weight_decay'] for g in wrapper.param_groups} == {0.0, 0.05}


def test_fp16_on_cpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"fp16 with loss scaling runs on CUDA only, but the "
                       r"model is on 'cpu'; use dtype='bfloat16' \(tools/train.py --amp bf16\)"):
        build(Net(), dtype='float16')


def test_loss_scale_with_bf16_is_refused():
    with pytest.raises(ValueError, match=r"loss_scale='dynamic' with bf16; .* remove "
                       'loss_scale'):
        build(Net(), loss_scale='dynamic')


# ---------------------------------------------------------------------------------------
# what an update computes
# ---------------------------------------------------------------------------------------
def test_context_autocasts_on_the_model_device_and_only_inside():
    model = Net()
    wrapper = build(model)
    x = torch.randn(2, 8)
    with wrapper.optim_context(model):
        assert torch.is_autocast_enabled('cpu')
        assert torch.get_autocast_dtype('cpu') is torch.bfloat16
        assert model.fc1(x).dtype is torch.bfloat16
    assert not torch.is_autocast_enabled('cpu')
    assert model.fc1(x).dtype is torch.float32


def test_bf16_updates_equal_autocast_written_out():
    """Two accumulation windows of 2 iterations with clipping: parameters equal a loop of
    torch.autocast + loss / 2 + clip_grad_norm_ + AdamW, and the logged grad norm is the
    norm clip_grad_norm_ returned (on CPU, published at once)."""
    data = batches(4)
    model = Net()
    ref = copy.deepcopy(model)
    hub = MessageHub.get_instance('mixed_precision_test')
    wrapper = build(model, clip_grad=dict(max_norm=0.5), accumulative_counts=2)
    wrapper.message_hub = hub
    wrapper.initialize_count_status(model, 0, 4)

    ref_opt = build_optim_wrapper(ref, dict(
        optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05),
        constructor='LayerDecayOptimWrapperConstructor')).optimizer
    norms = []
    for i, (x, y) in enumerate(data):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = loss_of(ref, x, y)
        (loss / 2).backward()
        if i % 2 == 1:
            norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)))
            ref_opt.step()
            ref_opt.zero_grad()

    logged = []
    for x, y in data:
        with wrapper.optim_context(model):
            loss = loss_of(model, x, y)
        wrapper.update_params(loss)
        if 'train/grad_norm' in hub.log_scalars:
            logged.append(hub.get_scalar('train/grad_norm').current())
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name
    assert len(set(logged)) == 2 and sorted(set(logged)) == sorted(norms)
    assert norms[0] > 0.5  # the clip did act


def test_bf16_loss_is_close_to_fp32_and_not_equal():
    """bf16 rounds the matmul inputs (8 bits of mantissa): the loss moves by well under
    1% of its value here, and does move (autocast is really on)."""
    model = Net()
    wrapper = build(model)
    x, y = batches(1)[0]
    with wrapper.optim_context(model):
        low = loss_of(model, x, y)
    full = loss_of(model, x, y)
    assert low.dtype is torch.float32
    assert low.item() != full.item()
    assert abs(low.item() - full.item()) < 1e-2 * full.item()


# ---------------------------------------------------------------------------------------
# state dict
# ---------------------------------------------------------------------------------------
class FakeScaler:
    """Stands in for a CUDA GradScaler where there is no GPU: records its state calls."""

    def __init__(self, scale=1024.0):
        self.scale_value = scale

    def state_dict(self):
        return dict(scale=self.scale_value, growth_tracker=3)

    def load_state_dict(self, state):
        self.scale_value = state['scale']


def test_state_dict_round_trip_bf16_and_fp16_scaler_key():
    model = Net()
    wrapper = build(model)
    run_wrapper(wrapper, model, batches(2))
    state = wrapper.state_dict()
    assert 'loss_scaler' not in state
    fresh = build(Net())
    fresh.load_state_dict(copy.deepcopy(state))
    for a, b in zip(fresh.optimizer.state.values(), wrapper.optimizer.state.values()):
        assert torch.equal(a['exp_avg'], b['exp_avg'])
    # A checkpoint written with fp16 (its scaler under mmengine's key 'loss_scaler')
    # loads into a bf16 wrapper: the scaler state is dropped, the optimizer state kept.
    fp16_state = dict(copy.deepcopy(state), loss_scaler=dict(scale=512.0, growth_tracker=0))
    fresh.load_state_dict(fp16_state)
    # ... and an fp16 wrapper saves and restores its scaler under that key.
    wrapper.loss_scaler = FakeScaler(2048.0)
    saved = wrapper.state_dict()
    assert saved['loss_scaler'] == dict(scale=2048.0, growth_tracker=3)
    other = build(Net())
    other.loss_scaler = FakeScaler(1.0)
    other.load_state_dict(saved)
    assert other.loss_scaler.scale_value == 2048.0


# ---------------------------------------------------------------------------------------
# fused AdamW
# ---------------------------------------------------------------------------------------
def test_fused_adamw_not_set_on_cpu():
    wrapper = build(Net())
    assert not wrapper.optimizer.defaults.get('fused')


@pytest.mark.parametrize('optimizer, cfg_fused, expected', [
    ('AdamW', None, True), ('Adam', None, True),
    ('AdamW', False, False),  # an explicit config value wins
    ('SGD', None, None),  # not an Adam
])
def test_fused_adam_when_all_parameters_are_on_cuda(monkeypatch, optimizer, cfg_fused,
                                                    expected):
    # Parameters "on CUDA" (the check is patched); torch has a fused Adam kernel on CPU
    # too, so the optimizer can be built and stepped here.
    monkeypatch.setattr(ldc_module, '_on_cuda', lambda t: True)
    init_default_scope('mmbeit')
    opt = dict(type=optimizer, lr=1e-2)
    if cfg_fused is not None:
        opt['fused'] = cfg_fused
    model = Net()
    wrapper = build_optim_wrapper(model, dict(optimizer=opt,
                                              constructor='LayerDecayOptimWrapperConstructor'))
    assert wrapper.optimizer.defaults.get('fused') == expected
    run_wrapper(wrapper, model, batches(1))  # and it steps


def test_fused_rule_needs_every_parameter_on_cuda(monkeypatch):
    model = Net()
    on_cuda = {id(model.fc1.weight)}
    monkeypatch.setattr(ldc_module, '_on_cuda', lambda t: id(t) in on_cuda)
    groups = [dict(params=list(model.parameters()))]
    assert not ldc_module.use_fused_adam(torch.optim.AdamW, {}, groups)
    on_cuda = {id(p) for p in model.parameters()}
    assert ldc_module.use_fused_adam(torch.optim.AdamW, {}, groups)
    assert not ldc_module.use_fused_adam(torch.optim.AdamW, dict(foreach=True), groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_fp16_and_bf16_updates_and_lagged_grad_norm():
    for dtype in ('bfloat16', 'float16'):
        model = Net().cuda()
        wrapper = build(model, dtype=dtype, clip_grad=dict(max_norm=0.5))
        assert wrapper.optimizer.defaults['fused'] is True
        hub = MessageHub.get_instance(f'mixed_precision_cuda_{dtype}')
        wrapper.message_hub = hub
        data = [(x.cuda(), y.cuda()) for x, y in batches(3)]
        run_wrapper(wrapper, model, data[:1])
        assert 'train/grad_norm' not in hub.log_scalars  # published one step later
        run_wrapper(wrapper, model, data[1:])
        assert hub.get_scalar('train/grad_norm').current() > 0
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert ('loss_scaler' in wrapper.state_dict()) == (dtype == 'float16')
