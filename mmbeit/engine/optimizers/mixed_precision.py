"""Mixed-precision optimiser wrapper: bf16 autocast on CUDA and CPU, fp16 with loss scaling.

``MixedPrecisionOptimWrapper`` is what ``tools/train.py --amp`` puts in place of a
config's ``OptimWrapper``. It differs from mmengine's ``AmpOptimWrapper`` in three ways:

* **bf16 by default, on the model's device, CPU included.** Forward passes run under
  ``torch.autocast(device_type, dtype)`` where ``device_type`` is that of the model's
  parameters. bf16 keeps fp32's exponent range, so gradients cannot underflow and no loss
  scaling is used. fp16 is BEiT's known divergence path (NaN losses at scale, unilm#598,
  mmsegmentation#3162) and stays available only when asked for
  (``dtype='float16'``), with dynamic loss scaling (``torch.amp.GradScaler``); it needs
  CUDA: autocast fp16 with a scaler is not a CPU path.
* **The logged gradient norm costs no device sync.** mmengine's wrapper converts the norm
  returned by ``clip_grad_norm_`` to a Python float in the middle of every step, which on
  a GPU waits for the whole backward before the optimiser step is even queued. Here the
  norm is copied to pinned host memory without blocking and published to the message hub
  one optimiser step later, when the copy has long finished (on CUDA the logged
  ``grad_norm`` is therefore that of the previous step; on CPU it is the current one,
  read at no cost).
* **fp16 state in checkpoints.** The scaler's state is saved under ``loss_scaler``, the
  key mmengine's ``AmpOptimWrapper`` uses, so checkpoints of either load into the other.

Everything else is mmengine's ``OptimWrapper``: ``clip_grad`` (norm or value),
``accumulative_counts``, ``no_sync`` during accumulation, ``base_param_settings``.

Parts of the method that must stay in fp32 switch autocast off themselves (quantizer,
tokenizers, the MIM head's cross-entropy); the wrapper does not need to know them.

Example config::

    optim_wrapper = dict(
        type='MixedPrecisionOptimWrapper', dtype='bfloat16',
        optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.98), weight_decay=0.05),
        constructor='LayerDecayOptimWrapperConstructor',
        clip_grad=dict(max_norm=3.0))
"""
import math
from contextlib import contextmanager
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper

from mmbeit.registry import OPTIM_WRAPPERS

__all__ = ['MixedPrecisionOptimWrapper', 'resolve_amp_dtype']

# Spellings accepted for the two autocast dtypes (config values and --amp choices).
_DTYPE_NAMES = {
    'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, torch.bfloat16: torch.bfloat16,
    'fp16': torch.float16, 'float16': torch.float16, 'half': torch.float16,
    torch.float16: torch.float16,
}


def resolve_amp_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """``'bf16'`` / ``'bfloat16'`` / ``torch.bfloat16`` (and None) -> torch.bfloat16;
    ``'fp16'`` / ``'float16'`` / ``torch.float16`` -> torch.float16; anything else is a
    ValueError that lists the choices."""
    if dtype is None:
        return torch.bfloat16
    key = dtype.lower() if isinstance(dtype, str) else dtype
    if key not in _DTYPE_NAMES:
        raise ValueError(f"MixedPrecisionOptimWrapper: dtype={dtype!r} is not an autocast "
                         "dtype; use 'bfloat16' (bf16, the default) or 'float16' (fp16, "
                         'CUDA only, with loss scaling)')
    return _DTYPE_NAMES[key]


def _first_param_device(params) -> Optional[torch.device]:
    for p in params:
        return p.device
    return None


@OPTIM_WRAPPERS.register_module()
class MixedPrecisionOptimWrapper(OptimWrapper):
    """Optimiser wrapper with autocast (see the module docstring).

    Args:
        optimizer (torch.optim.Optimizer): the optimiser.
        dtype (str | torch.dtype): autocast dtype, ``'bfloat16'`` (or ``'bf16'``) or
            ``'float16'`` (or ``'fp16'``). Defaults to ``'bfloat16'``.
        loss_scale (str | float | dict, optional): fp16 only. ``'dynamic'``: a default
            ``GradScaler``; a float: a static scale; a dict: ``GradScaler`` arguments.
            Defaults to None, which means ``'dynamic'`` for fp16 and no scaling for bf16
            (giving one with bf16 is an error).
        device_type (str, optional): autocast device type (``'cuda'``, ``'cpu'``).
            Defaults to None: the device type of the model's parameters.
        cache_enabled (bool): autocast's cache of low-precision weight copies within one
            forward. Defaults to True.
        **kwargs: ``OptimWrapper`` arguments (``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer,
                 dtype: Union[str, torch.dtype] = 'bfloat16',
                 loss_scale: Union[str, float, dict, None] = None,
                 device_type: Optional[str] = None, cache_enabled: bool = True, **kwargs):
        super().__init__(optimizer=optimizer, **kwargs)
        self.cast_dtype = resolve_amp_dtype(dtype)
        self.device_type = device_type
        self.cache_enabled = cache_enabled
        self.loss_scaler = None
        self._static_scale = None
        if self.cast_dtype == torch.bfloat16:
            if loss_scale is not None:
                raise ValueError(
                    f'MixedPrecisionOptimWrapper: loss_scale={loss_scale!r} with bf16; bf16 '
                    "has fp32's exponent range and needs no loss scaling: remove loss_scale "
                    "(or use dtype='float16')")
        else:
            params = (p for g in optimizer.param_groups for p in g['params'])
            device = _first_param_device(params)
            self._check_fp16_device(device_type or (device.type if device else None))
            if loss_scale is None or loss_scale == 'dynamic':
                self.loss_scaler = torch.amp.GradScaler('cuda')
            elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
                if not (math.isfinite(loss_scale) and loss_scale > 0):
                    raise ValueError(f'MixedPrecisionOptimWrapper: a static loss_scale must be '
                                     f'a finite number > 0 (e.g. 512.0), got {loss_scale!r}; '
                                     f"or use 'dynamic'")
                self._static_scale = float(loss_scale)
                self.loss_scaler = torch.amp.GradScaler('cuda', init_scale=self._static_scale)
            elif isinstance(loss_scale, dict):
                self.loss_scaler = torch.amp.GradScaler('cuda', **loss_scale)
            else:
                raise TypeError(f"MixedPrecisionOptimWrapper: loss_scale must be 'dynamic', a "
                                f'number or a dict of GradScaler arguments, got {loss_scale!r}')
        # (pinned host copy of a gradient norm, event after the copy) awaiting publication
        self._pending_norm = None

    @staticmethod
    def _check_fp16_device(device_type: Optional[str]) -> None:
        if device_type is not None and device_type != 'cuda':
            raise ValueError(
                f'MixedPrecisionOptimWrapper: fp16 with loss scaling runs on CUDA only, but '
                f"the model is on {device_type!r}; use dtype='bfloat16' (tools/train.py "
                '--amp bf16), which runs on CPU and needs no loss scaling')

    # ------------------------------------------------------------------ autocast
    def _autocast_device(self, model: nn.Module) -> str:
        if self.device_type is not None:
            return self.device_type
        device = _first_param_device(model.parameters())
        if device is None:
            device = _first_param_device(p for g in self.optimizer.param_groups
                                         for p in g['params'])
        return device.type if device is not None else 'cpu'

    @contextmanager
    def optim_context(self, model: nn.Module):
        """mmengine's context (no gradient sync while accumulating) plus autocast on the
        model's device type."""
        device_type = self._autocast_device(model)
        if self.loss_scaler is not None:
            self._check_fp16_device(device_type)
        with super().optim_context(model), torch.autocast(
                device_type=device_type, dtype=self.cast_dtype,
                cache_enabled=self.cache_enabled):
            yield

    # ------------------------------------------------------------------ update
    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if self.loss_scaler is not None:
            loss = self.loss_scaler.scale(loss)
        super().backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        if self.loss_scaler is None:
            super().step(**kwargs)  # clips (if configured), then optimizer.step
            return
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)
            self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._static_scale)

    def _clip_grad(self) -> None:
        """Clip as mmengine does; publish the norm (or max value) without a device
        sync (see the module docstring)."""
        params = [p for g in self.optimizer.param_groups for p in g['params']
                  if p.requires_grad and p.grad is not None]
        if not params:
            return
        value = self.clip_func(params, **self.clip_grad_kwargs)
        if value is None:  # clip_grad_value_ returns nothing
            return
        value = value.detach()
        if value.device.type != 'cuda':
            # CPU: the value is already computed, reading it waits for nothing.
            self.message_hub.update_scalar(f'train/{self.grad_name}', float(value))
            return
        self._publish_pending()
        host = torch.empty((), dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending_norm = (host, event)

    def _publish_pending(self) -> None:
        if self._pending_norm is None:
            return
        host, event = self._pending_norm
        event.synchronize()  # waits for the previous step's clip at most
        self.message_hub.update_scalar(f'train/{self.grad_name}', float(host))
        self._pending_norm = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.loss_scaler is not None:
            state['loss_scaler'] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        scaler_state = state_dict.pop('loss_scaler', None)
        if self.loss_scaler is not None and scaler_state is not None:
            self.loss_scaler.load_state_dict(scaler_state)
        elif self.loss_scaler is not None:
            print_log('MixedPrecisionOptimWrapper: the checkpoint has no fp16 loss-scaler '
                      'state (it was not trained in fp16); the scaler starts afresh',
                      logger='current')
        elif scaler_state is not None:
            print_log('MixedPrecisionOptimWrapper: dropping the fp16 loss-scaler state of the '
                      'checkpoint; this run uses bf16, which needs no loss scaling',
                      logger='current')
        super().load_state_dict(state_dict)

    def __repr__(self) -> str:
        scale = 'none' if self.loss_scaler is None else (
            'static' if self._static_scale is not None else 'dynamic')
        return (f'{type(self).__name__}(dtype={self.cast_dtype}, loss_scale={scale}, '
                f'device_type={self.device_type or "auto"})\n{self.optimizer!r}')
