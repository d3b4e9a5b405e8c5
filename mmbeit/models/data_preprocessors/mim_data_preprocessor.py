"""Data preprocessor of BEiT / BEiT v2 pretraining: moves and normalises, nothing else.

Input, from ``PackMIMInputs`` (``inputs = [view, tokenizer_view, mask]`` per sample) and
the collate function: ``inputs`` is ``[views, tokenizer_views, masks]``, each either a
stacked tensor (``default_collate``, what the pretraining configs use: stacked and pinned
in the dataloader workers) or a sequence of B tensors (``pseudo_collate``).

Output, the keyword arguments of the pretraining algorithm's ``forward``:

- ``inputs`` [B, 3, H, W] float: the backbone view, normalised with ``mean`` / ``std``
  (0-255 units; ImageNet statistics by default);
- ``target_inputs`` [B, 3, h, w] float in [0, 1]: the tokenizer view. Only divided by
  255: each tokenizer applies its own input map inside ``tokenize`` (the dVAE its
  logit-Laplace map, VQ-KD ``2x - 1``), so a tokenizer can never be fed the other one's
  normalisation (docs/contracts.md "Target generators");
- ``mask`` [B, N] bool, row-major over the backbone's patch grid (H/p x W/p), drawn per
  sample in the data pipeline by ``MIMMask``;
- ``num_masked`` (int or None): the number of True entries of every row when all rows
  have the same (BEiT v2's exact masks), counted on the host before the copy, so that the
  algorithm can gather the masked positions without a device sync; None otherwise;
- ``data_samples``: passed through.

The views travel as uint8 until they reach the device (a quarter of the bytes of fp32).
"""
from numbers import Integral
from typing import Sequence

import torch
from mmengine.model import BaseDataPreprocessor

from mmbeit.registry import MODELS

from ..utils import check_rgb

__all__ = ['MIMDataPreprocessor']


@MODELS.register_module()
class MIMDataPreprocessor(BaseDataPreprocessor):
    """Stack, move and normalise the two views; move the masks.

    Args:
        mean (sequence of 3 floats): backbone-view mean in 0-255 units. Defaults to
            ImageNet's (123.675, 116.28, 103.53).
        std (sequence of 3 floats): backbone-view std in 0-255 units. Defaults to
            ImageNet's (58.395, 57.12, 57.375).
        patch_size (int): backbone patch size; the masks must have
            (H / patch_size) * (W / patch_size) entries. Defaults to 16.
        non_blocking (bool): copy to the device asynchronously (worth it with the
            dataloader's ``pin_memory=True``). Defaults to True.
    """

    def __init__(self, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), patch_size: int = 16,
                 non_blocking: bool = True, **removed):
        if 'mask_generator' in removed:
            raise TypeError(
                'MIMDataPreprocessor no longer draws masks: move mask_generator=... into '
                "the training pipeline as dict(type='mmbeit.MIMMask', patch_size=P, "
                'generator=<the same dict>) after BEiTMaskedViews, so that each sample\'s '
                'mask is drawn in the dataloader workers')
        if removed:
            raise TypeError(f'MIMDataPreprocessor got unexpected arguments {sorted(removed)}')
        if not isinstance(non_blocking, bool):
            raise ValueError(f'MIMDataPreprocessor: non_blocking must be True or False, got '
                             f'{non_blocking!r}')
        if not (isinstance(patch_size, Integral) and not isinstance(patch_size, bool)
                and patch_size > 0):
            raise ValueError(f'MIMDataPreprocessor: patch_size must be a positive int, got '
                             f'{patch_size!r}')
        mean = check_rgb(mean, 'mean', 'MIMDataPreprocessor')
        std = check_rgb(std, 'std', 'MIMDataPreprocessor', positive=True)
        super().__init__(non_blocking=non_blocking)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.patch_size = int(patch_size)

    def forward(self, data: dict, training: bool = False) -> dict:
        entries = data['inputs']
        if not (isinstance(entries, (list, tuple)) and len(entries) == 3):
            got = (f'{len(entries)} entries' if isinstance(entries, (list, tuple))
                   else type(entries).__name__)
            raise TypeError('MIMDataPreprocessor expects inputs = [views, tokenizer_views, '
                            'masks] (pipeline: ... BEiTMaskedViews, MIMMask, PackMIMInputs), '
                            f'got {got}')
        img, target, mask = (v if torch.is_tensor(v) else torch.stack(list(v))
                             for v in entries)
        # counted before the copy, on the host: equal counts (BEiT v2's exact masks) let
        # the algorithm gather the masked positions without waiting for the device
        num_masked = None
        if mask.device.type == 'cpu' and mask.dim() == 2 and len(mask):
            counts = mask.sum(1)
            if bool((counts == counts[0]).all()):
                num_masked = int(counts[0])
        img, target, mask = (v.to(self.device, non_blocking=self._non_blocking)
                             for v in (img, target, mask))
        b, _, h, w = img.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f'view size {h}x{w} is not a multiple of patch_size '
                             f'{self.patch_size}')
        n = (h // self.patch_size) * (w // self.patch_size)
        if mask.dtype != torch.bool or tuple(mask.shape) != (b, n):
            raise ValueError(f'masks must be bool [B, N] = [{b}, {n}] for {h}x{w} views and '
                             f'patch_size {self.patch_size}, got {mask.dtype} '
                             f'{list(mask.shape)}: is MIMMask.patch_size the backbone\'s?')
        img = (img.float() - self.mean) / self.std  # [B, 3, H, W]
        target = target.float() / 255.  # [B, 3, h, w] in [0, 1]
        return dict(inputs=img, target_inputs=target, mask=mask, num_masked=num_masked,
                    data_samples=data.get('data_samples'))
