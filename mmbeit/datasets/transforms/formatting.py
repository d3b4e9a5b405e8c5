"""Pack the two pretraining views and the mask for the MIM data preprocessor.

One sample after :class:`PackMIMInputs`::

    results['inputs']       = [img, target, mask]  # img [3, H, W] uint8 RGB (backbone view)
                                                   # target [3, h, w] uint8 RGB (tokenizer)
                                                   # mask [N] bool, N = (H/p)(W/p) (MIMMask)
    results['data_samples'] = BaseDataElement(metainfo=dict(img_path=..., img_shape=...))

The pretraining configs collate with ``collate_fn=dict(type='default_collate')``: the
workers stack each entry, so the (pinned) batch is ::

    batch['inputs']       = [Tensor[B, 3, H, W], Tensor[B, 3, h, w], Tensor[B, N]]
    batch['data_samples'] = [data_sample_0, ..., data_sample_{B-1}]

mmengine's ``pseudo_collate`` gives one sequence of B tensors per entry instead; the MIM
data preprocessor stacks those itself.
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
    """Pack ``img``, ``target_img`` and ``mask`` as ``inputs = [img, target, mask]``.

    The views become contiguous ``torch.uint8`` tensors [3, H, W] in RGB order; the MIM
    data preprocessor normalises them (backbone view) and divides by 255 (tokenizer view).
    The mask (from :class:`MIMMask`) becomes a ``torch.bool`` tensor [N].
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
        for key, producer in (('img', 'BEiTMaskedViews'), ('target_img', 'BEiTMaskedViews'),
                              ('mask', 'MIMMask')):
            if key not in results:
                raise KeyError(f'PackMIMInputs needs results[{key!r}]; put {producer} '
                               f'before it in the pipeline')
        mask = results['mask']
        if not (isinstance(mask, np.ndarray) and mask.dtype == bool and mask.ndim == 1):
            got = (f'{mask.dtype} array of shape {mask.shape}' if isinstance(mask, np.ndarray)
                   else type(mask).__name__)
            raise TypeError(f"PackMIMInputs needs results['mask'] as a 1-D bool array "
                            f'(MIMMask), got {got}')
        inputs = [_to_chw_tensor(results['img'], 'img'),
                  _to_chw_tensor(results['target_img'], 'target_img'),
                  torch.from_numpy(np.ascontiguousarray(mask))]
        metainfo = {k: results[k] for k in self.meta_keys if k in results}
        return dict(inputs=inputs, data_samples=BaseDataElement(metainfo=metainfo))

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'
