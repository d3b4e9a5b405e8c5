"""Pack the two pretraining views for the MIM data preprocessor (beit-spec.md 4.2).

One sample after :class:`PackMIMInputs`::

    results['inputs']       = [img, target]   # torch.uint8, contiguous, RGB
                                              # img [3, H, W] (backbone view)
                                              # target [3, h, w] (tokenizer view)
    results['data_samples'] = BaseDataElement(metainfo=dict(img_path=..., img_shape=...))

mmengine's default collate function (``pseudo_collate``, what the Runner uses) turns a
list of such samples into a batch **per view**, not per sample: it transposes every
list field, so ::

    batch['inputs']       = [(img_0, ..., img_{B-1}), (target_0, ..., target_{B-1})]
    batch['data_samples'] = [data_sample_0, ..., data_sample_{B-1}]

``torch.stack(batch['inputs'][0])`` is the [B, 3, H, W] backbone batch and
``torch.stack(batch['inputs'][1])`` the [B, 3, h, w] tokenizer batch (both uint8, RGB).
With ``collate_fn=dict(type='default_collate')`` they come already stacked:
``batch['inputs'] = [Tensor[B, 3, H, W], Tensor[B, 3, h, w]]``.
"""
from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import BaseDataElement

from mmbeit.registry import TRANSFORMS

__all__ = ['PackMIMInputs']


def _to_chw_tensor(array, key: str) -> torch.Tensor:
    if not (isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == 3
            and array.shape[2] == 3):
        got = (f'{array.dtype} array of shape {array.shape}' if isinstance(array, np.ndarray)
               else type(array).__name__)
        raise TypeError(f'PackMIMInputs needs results[{key!r}] as an HxWx3 uint8 RGB array, '
                        f'got {got}')
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


@TRANSFORMS.register_module()
class PackMIMInputs(BaseTransform):
    """Pack ``img`` and ``target_img`` as ``inputs = [img, target]`` (spec 4.2).

    Both become contiguous ``torch.uint8`` tensors [3, H, W] in RGB order; the MIM data
    preprocessor normalises them (backbone view) and divides by 255 (tokenizer view).
    ``data_samples`` is a :class:`mmengine.structures.BaseDataElement` whose metainfo
    holds the ``meta_keys`` present in ``results``. The collated batch format is given
    in the module docstring.

    Args:
        meta_keys (Sequence[str]): keys copied into the metainfo when present.
            Default ``('img_path', 'ori_shape', 'img_shape')``.
    """

    def __init__(self, meta_keys: Sequence[str] = ('img_path', 'ori_shape', 'img_shape')):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        for key in ('img', 'target_img'):
            if key not in results:
                raise KeyError(f'PackMIMInputs needs results[{key!r}]; put BEiTMaskedViews '
                               f'before it in the pipeline')
        inputs = [_to_chw_tensor(results['img'], 'img'),
                  _to_chw_tensor(results['target_img'], 'target_img')]
        metainfo = {k: results[k] for k in self.meta_keys if k in results}
        return dict(inputs=inputs, data_samples=BaseDataElement(metainfo=metainfo))

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'
