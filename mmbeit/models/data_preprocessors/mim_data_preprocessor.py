"""Data preprocessor of BEiT / BEiT v2 pretraining (beit-spec.md 2 and 4.2).

Input, from ``PackMIMInputs`` (``inputs = [view, tokenizer_view]``, uint8 RGB [3, H, W]
each) and mmengine's ``pseudo_collate``, which groups by position: ``inputs`` is
``[views, tokenizer_views]``, two sequences of B tensors. ``default_collate`` gives the
same two entries already stacked; both are accepted.

Output, the keyword arguments of the pretraining algorithm's ``forward``:

- ``inputs`` [B, 3, H, W] float: the backbone view, normalised with ``mean`` / ``std``
  (0-255 units; ImageNet statistics by default);
- ``target_inputs`` [B, 3, h, w] float in [0, 1]: the tokenizer view. Only divided by
  255: each tokenizer applies its own input map inside ``tokenize`` (the dVAE its
  logit-Laplace map, VQ-KD ``2x - 1``), so a tokenizer can never be fed the other one's
  normalisation (docs/contracts.md "Target generators");
- ``mask`` [B, N] bool, row-major over the backbone's patch grid (H/p x W/p), drawn for
  the batch by the ``mask_generator`` (a ``TASK_UTILS`` entry such as
  ``BlockwiseMaskGenerator``), so the mask size follows the input size;
- ``data_samples``: passed through.
"""
from typing import Optional, Sequence

import torch
from mmengine.model import BaseDataPreprocessor

from mmbeit.registry import MODELS, TASK_UTILS

__all__ = ['MIMDataPreprocessor']


@MODELS.register_module()
class MIMDataPreprocessor(BaseDataPreprocessor):
    """Stack and normalise the two views, draw the masks.

    Args:
        mean / std (sequence of 3 floats): backbone-view normalisation in 0-255 units.
        patch_size (int): backbone patch size (grid = view size / patch size).
        mask_generator (dict): a ``TASK_UTILS`` config; called as
            ``generator(batch_size, grid) -> bool [B, N]``.
    """

    def __init__(self, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), patch_size: int = 16,
                 mask_generator: Optional[dict] = None, non_blocking: bool = False):
        super().__init__(non_blocking=non_blocking)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.patch_size = patch_size
        self.mask_generator = TASK_UTILS.build(
            mask_generator or dict(type='BlockwiseMaskGenerator'))

    def forward(self, data: dict, training: bool = False) -> dict:
        views = data['inputs']
        if not (isinstance(views, (list, tuple)) and len(views) == 2):
            raise TypeError('MIMDataPreprocessor expects inputs = [views, tokenizer_views] '
                            '(end the pipeline with PackMIMInputs and collate with '
                            f'pseudo_collate), got {type(views).__name__}')
        img, target = (v if torch.is_tensor(v) else torch.stack(list(v)) for v in views)
        img = img.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        img = (img.float() - self.mean) / self.std  # [B, 3, H, W]
        target = target.float() / 255.  # [B, 3, h, w] in [0, 1]
        b, _, h, w = img.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f'view size {h}x{w} is not a multiple of patch_size '
                             f'{self.patch_size}')
        mask = self.mask_generator(b, (h // self.patch_size, w // self.patch_size))
        return dict(inputs=img, target_inputs=target, mask=mask.to(self.device),
                    data_samples=data.get('data_samples'))
