"""Publish a GPU step's losses to the message hub without waiting for the step to finish.

mmengine's ``RuntimeInfoHook`` hands every loss of ``train_step``'s outputs to the message
hub, which turns each into a Python float with ``.item()``: on a GPU the host then waits,
every iteration, until the device has finished the whole step, so it cannot queue the next
step's kernels while this one runs. :class:`AsyncRuntimeInfoHook` is that hook with one
change: when the outputs are CUDA tensors, it starts a non-blocking copy of them into
pinned host memory, records an event, and publishes them one iteration later, when the
copy has finished (the host then waits at most for the previous step, never for the one
just queued). The values, their keys and their order in the hub are those of mmengine's
hook, one iteration late; the last iteration's are published before the epoch and the
run end, so epoch-end logging and checkpoints see them all. CPU outputs (already computed)
are published at once, exactly as mmengine does.

``configs/_base_/default_runtime.py`` puts it in place of mmengine's hook
(``default_hooks.runtime_info``).
"""
from typing import List, Optional, Tuple

import torch
from mmengine.hooks import RuntimeInfoHook

from mmbeit.registry import HOOKS

__all__ = ['AsyncRuntimeInfoHook']


@HOOKS.register_module()
class AsyncRuntimeInfoHook(RuntimeInfoHook):
    """mmengine's ``RuntimeInfoHook`` without a device sync per iteration (module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: Optional[Tuple[List[str], torch.Tensor, object]] = None

    @staticmethod
    def _deferrable(values) -> bool:
        """True when every value is a one-element CUDA tensor (reading it would sync)."""
        return bool(values) and all(torch.is_tensor(v) and v.numel() == 1 and v.is_cuda
                                    for v in values)

    @staticmethod
    def _start_copy(stacked: torch.Tensor):
        """Non-blocking copy to pinned host memory; returns (host tensor, CUDA event)."""
        host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
        host.copy_(stacked, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _publish_pending(self, runner) -> None:
        if self._pending is None:
            return
        keys, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # the previous step's copy: done, or about to be
        for key, value in zip(keys, host.tolist()):
            runner.message_hub.update_scalar(f'train/{key}', value)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        self._publish_pending(runner)
        if not outputs:
            return
        if not self._deferrable(list(outputs.values())):
            super().after_train_iter(runner, batch_idx, data_batch, outputs)
            return
        stacked = torch.stack([v.detach().reshape(()).float() for v in outputs.values()])
        host, event = self._start_copy(stacked)
        self._pending = (list(outputs), host, event)

    def after_train_epoch(self, runner) -> None:
        self._publish_pending(runner)
        super().after_train_epoch(runner)

    def after_train(self, runner) -> None:
        self._publish_pending(runner)
        super().after_train(runner)
