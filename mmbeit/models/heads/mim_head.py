"""Masked-image-modeling head of BEiT / BEiT v2 (BEiT paper section 2.3, Equation 1; BEiT v2
paper section 2.3, Equation 3).

``lm_head``: one Linear from the backbone width to the tokenizer vocabulary, applied only
to the token states at masked positions; the loss is cross-entropy against the tokenizer's
ids there, averaged over all masked tokens of the batch (no label smoothing). Masked-token
accuracy (top-1, in percent) is returned with the loss so it is logged next to it.
Checkpoint key: ``head.lm_head.{weight,bias}`` (unilm's ``lm_head``).

Under autocast the Linear runs in the autocast dtype (it is most of the head's work); the
log-softmax statistics, the cross-entropy and the accuracy are computed from the logits
upcast to fp32 with autocast switched off, so a bf16 run sums over the 8192-way softmax in
fp32 as the fp32 run does.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmbeit.models.utils.arg_checks import check_int, check_number
from mmbeit.models.utils.init import trunc_normal_
from mmbeit.registry import MODELS

__all__ = ['MIMHead']


@MODELS.register_module()
class MIMHead(BaseModule):
    """Linear head over the visual vocabulary.

    Args:
        in_channels (int): token width D. vocab_size (int): tokenizer vocabulary K.
        loss_weight (float): multiplies the cross-entropy.
    """

    def __init__(self, in_channels: int, vocab_size: int = 8192, loss_weight: float = 1.0,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        in_channels = check_int(in_channels, 'in_channels', 'MIMHead')
        self.vocab_size = check_int(vocab_size, 'vocab_size', 'MIMHead')
        self.loss_weight = check_number(loss_weight, 'loss_weight', 'MIMHead', low=0)
        self.lm_head = nn.Linear(in_channels, vocab_size)

    def init_weights(self) -> None:
        if self.init_cfg is not None:
            return super().init_weights()
        trunc_normal_(self.lm_head.weight, std=0.02, a=-0.02, b=0.02)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, D] (states at masked positions) -> logits [M, K]."""
        return self.lm_head(x)

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x [M, D], target [M] token ids -> dict(loss, acc)."""
        if x.shape[0] != target.shape[0]:
            raise ValueError(f'{x.shape[0]} masked states but {target.shape[0]} targets')
        logits = self(x)  # [M, K], in the autocast dtype under autocast
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            loss = F.cross_entropy(logits, target) * self.loss_weight
            with torch.no_grad():
                acc = (logits.argmax(dim=1) == target).float().mean() * 100
        return dict(loss=loss, acc=acc)
