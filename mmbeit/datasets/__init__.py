"""Datasets and transforms of mmbeit (beit-spec.md 4.2).

Importing this package registers ``UnlabeledImageFolder`` in ``mmbeit.registry.DATASETS``
and the transforms (``LoadImageRGB``, ``BEiTMaskedViews``, ``PackMIMInputs``) in
``mmbeit.registry.TRANSFORMS``. Configs do not need to import it: the registries'
``locations`` import it on the first build.
"""
from . import transforms  # noqa: F401
from .transforms.formatting import PackMIMInputs
from .transforms.loading import LoadImageRGB, pil_to_rgb
from .transforms.mim_views import PIL_INTERPOLATIONS, BEiTMaskedViews
from .unlabeled_folder import IMG_EXTENSIONS, UnlabeledImageFolder, list_images

__all__ = ['UnlabeledImageFolder', 'IMG_EXTENSIONS', 'list_images', 'LoadImageRGB',
           'pil_to_rgb', 'BEiTMaskedViews', 'PIL_INTERPOLATIONS', 'PackMIMInputs']
