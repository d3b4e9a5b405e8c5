"""Draw each pretraining sample's patch mask in the data pipeline.

BEiT masks about 40% of the patches of the backbone view (BEiT paper sections 2.3 and 2.5;
BEiT v2 paper section 3.1). :class:`MIMMask` draws that mask for one sample, after
:class:`~mmbeit.datasets.transforms.BEiTMaskedViews` has cut the views, so it runs in the
dataloader workers next to the crop instead of serially in the training process. The
grid follows the backbone view: ``img.shape[:2] // patch_size``.

With :class:`~mmbeit.datasets.SeededDataset` the generator's numpy draws are seeded per
sample, so masks are reproducible and differ across samples, ranks and workers.
"""
from numbers import Integral
from typing import Optional

import numpy as np
from mmcv.transforms import BaseTransform

from mmbeit.registry import TASK_UTILS, TRANSFORMS

from .mask_generators import BlockwiseMaskGenerator  # noqa: F401  (registers the generators)

__all__ = ['MIMMask']


@TRANSFORMS.register_module()
class MIMMask(BaseTransform):
    """Set ``results['mask']``: numpy bool [h*w] over the backbone view's patch grid.

    Needs ``results['img']`` (the backbone view, H x W x 3) whose sides are multiples of
    ``patch_size``. Row-major, True = masked; :class:`PackMIMInputs` packs it as the third
    input.

    Args:
        patch_size (int): the backbone's patch size. Defaults to 16.
        generator (dict, optional): a ``TASK_UTILS`` config of a mask generator, e.g.
            ``dict(type='BlockwiseMaskGenerator', mask_ratio=75 / 196, exact=True)``.
            Defaults to ``BlockwiseMaskGenerator()`` (BEiT v2's 75 of 196 patches).

    Example (BEiT v2, ViT-B/16)::

        dict(type='MIMMask', patch_size=16,
             generator=dict(type='BlockwiseMaskGenerator', mask_ratio=75 / 196,
                            min_num_patches=16, min_aspect=0.3, exact=True))
    """

    def __init__(self, patch_size: int = 16, generator: Optional[dict] = None):
        if not (isinstance(patch_size, Integral) and not isinstance(patch_size, bool)
                and patch_size > 0):
            raise ValueError(f'MIMMask: patch_size must be a positive int, got {patch_size!r}')
        self.patch_size = int(patch_size)
        # built in mmbeit's scope even inside a foreign dataset (mmpretrain.ImageNet builds
        # its pipeline in mmpretrain's scope); 'mmpretrain.X' still reaches theirs
        generator = dict(generator or dict(type='BlockwiseMaskGenerator'))
        generator.setdefault('_scope_', 'mmbeit')
        self.generator = TASK_UTILS.build(generator)
        if not callable(getattr(self.generator, 'sample', None)):
            raise TypeError(f'MIMMask: generator {type(self.generator).__name__} has no '
                            f'sample(grid) method; use BlockwiseMaskGenerator or '
                            f'RandomMaskGenerator')

    def transform(self, results: dict) -> dict:
        if 'img' not in results:
            raise KeyError("MIMMask needs results['img'] (the backbone view): put it after "
                           'BEiTMaskedViews in the pipeline')
        h, w = results['img'].shape[:2]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f'MIMMask: view size {h}x{w} is not a multiple of patch_size '
                             f'{self.patch_size}')
        grid = (h // self.patch_size, w // self.patch_size)
        results['mask'] = np.ascontiguousarray(self.generator.sample(grid), dtype=bool)
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(patch_size={self.patch_size}, generator={self.generator!r})'
