"""Codebook-usage logging for VQ-KD training (BEiT v2 tokenizer, paper section 2.2).

A collapsing codebook (most codes never chosen, unilm#1556) is invisible in the loss. The
hook reads the per-code counts every quantizer accumulates during training forwards
(already summed over ranks) and logs, over a sliding window of iterations:

- ``codebook_usage``: fraction of codes chosen at least once in the window;
- ``codebook_perplexity``: exp(entropy) of the usage distribution (K when uniform);
- ``codebook_restarted``: codes restarted so far (only with ``dead_code_threshold > 0``).

Values go to the message hub as ``train/<name>`` scalars, so they appear in the log line
and in ``vis_data/scalars.json`` like the losses. With several quantizers in one model the
names get the module path as a suffix.

The per-iteration counts stay on the quantizer's device (a window of them and their
running sum); the statistics are computed on the host only at the iterations the logger
prints (every ``interval`` iterations and at the end of each epoch, as mmengine's
``LoggerHook`` does), so the hook does not stall a GPU step by reading counts back every
iteration.
"""
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import torch
from mmengine.hooks import Hook, LoggerHook
from mmengine.model import is_model_wrapper

from mmbeit.models.tokenizers.quantizer import NormEMAQuantizer, codebook_usage_stats
from mmbeit.registry import HOOKS

__all__ = ['CodebookUsageHook']


@HOOKS.register_module()
class CodebookUsageHook(Hook):
    """Log codebook usage of every :class:`NormEMAQuantizer` in the model.

    Args:
        window (int): number of training iterations the statistics cover.
        interval (int, optional): publish the statistics every ``interval`` iterations
            (and at the end of each epoch). Defaults to None: the interval of the
            runner's ``LoggerHook`` (1 without one), so every printed line has fresh
            values.
    """
    priority = 'NORMAL'

    def __init__(self, window: int = 100, interval: Optional[int] = None):
        if window < 1:
            raise ValueError(f'CodebookUsageHook: window must be >= 1, got {window}')
        if interval is not None and interval < 1:
            raise ValueError(f'CodebookUsageHook: interval must be >= 1, got {interval}')
        self.window = window
        self.interval = interval
        self._publish_every = interval or 1
        self._quantizers: List[Tuple[str, NormEMAQuantizer]] = []
        self._history: Dict[str, Deque[torch.Tensor]] = {}
        self._sums: Dict[str, torch.Tensor] = {}

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._quantizers = [(name, m) for name, m in model.named_modules()
                            if isinstance(m, NormEMAQuantizer)]
        if not self._quantizers:
            raise RuntimeError(f'CodebookUsageHook: {type(model).__name__} has no '
                               'NormEMAQuantizer; remove the hook from custom_hooks')
        if self.interval is None:
            loggers = [h for h in getattr(runner, 'hooks', []) if isinstance(h, LoggerHook)]
            self._publish_every = loggers[0].interval if loggers else 1
        for name, q in self._quantizers:
            q.pop_usage_counts()
            self._history[name] = deque()
            self._sums[name] = torch.zeros_like(q.usage_counts)

    def _publish_now(self, runner, batch_idx: int) -> bool:
        if self.every_n_inner_iters(batch_idx, self._publish_every):
            return True
        loader = getattr(runner, 'train_dataloader', None)
        return loader is not None and self.end_of_epoch(loader, batch_idx)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for name, q in self._quantizers:
            counts = q.pop_usage_counts()  # on the quantizer's device
            hist = self._history[name]
            hist.append(counts)
            self._sums[name] += counts
            if len(hist) > self.window:
                self._sums[name] -= hist.popleft()
        if not self._publish_now(runner, batch_idx):
            return
        for name, q in self._quantizers:
            stats = codebook_usage_stats(self._sums[name].cpu().clamp(min=0))
            suffix = f'_{name}' if len(self._quantizers) > 1 else ''
            hub = runner.message_hub
            hub.update_scalar(f'train/codebook_usage{suffix}', stats['usage'])
            hub.update_scalar(f'train/codebook_perplexity{suffix}', stats['perplexity'])
            if q.dead_code_threshold > 0:
                hub.update_scalar(f'train/codebook_restarted{suffix}',
                                  float(q.num_restarted))
