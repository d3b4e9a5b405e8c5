"""Datasets, samplers and transforms of mmbeit.

Importing this package registers ``UnlabeledImageFolder`` and ``SeededDataset`` in
``mmbeit.registry.DATASETS``, ``SeededSampler`` in ``DATA_SAMPLERS``, the transforms
(``LoadImageRGB``, ``BEiTMaskedViews``, ``MIMMask``, ``PackMIMInputs``) in
``TRANSFORMS`` and the mask generators in ``TASK_UTILS``. Configs do not need to import
it: the registries' ``locations`` import it on the first build.
"""
from . import transforms  # noqa: F401
from .seeding import SeededDataset, SeededSampler, derive_seed, derive_seeds, seed_global_rngs
from .transforms import (
                         PIL_INTERPOLATIONS,
                         BEiTMaskedViews,
                         BlockwiseMaskGenerator,
                         LoadImageRGB,
                         MIMMask,
                         PackMIMInputs,
                         RandomMaskGenerator,
                         pil_to_rgb,
)
from .unlabeled_folder import IMG_EXTENSIONS, UnlabeledImageFolder, list_images

__all__ = ['UnlabeledImageFolder', 'IMG_EXTENSIONS', 'list_images', 'LoadImageRGB',
           'pil_to_rgb', 'BEiTMaskedViews', 'PIL_INTERPOLATIONS', 'PackMIMInputs', 'MIMMask',
           'BlockwiseMaskGenerator', 'RandomMaskGenerator', 'SeededDataset', 'SeededSampler',
           'derive_seed', 'derive_seeds', 'seed_global_rngs']
