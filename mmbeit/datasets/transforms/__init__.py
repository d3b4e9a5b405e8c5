"""Transforms of mmbeit (beit-spec.md 4.2); importing this package registers them in
``mmbeit.registry.TRANSFORMS``.

Pretraining pipeline: ``LoadImageRGB`` -> ``BEiTMaskedViews`` -> ``PackMIMInputs``.
"""
from .formatting import PackMIMInputs
from .loading import LoadImageRGB, pil_to_rgb
from .mim_views import PIL_INTERPOLATIONS, BEiTMaskedViews

__all__ = ['LoadImageRGB', 'pil_to_rgb', 'BEiTMaskedViews', 'PIL_INTERPOLATIONS',
           'PackMIMInputs']
