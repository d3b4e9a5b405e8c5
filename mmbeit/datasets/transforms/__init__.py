"""Transforms of mmbeit; importing this package registers them in
``mmbeit.registry.TRANSFORMS`` (and the mask generators in ``TASK_UTILS``).

Pretraining pipeline: ``LoadImageRGB`` -> ``BEiTMaskedViews`` -> ``MIMMask`` ->
``PackMIMInputs``.
"""
from .formatting import PackMIMInputs
from .loading import LoadImageRGB, pil_to_rgb
from .mask_generators import BlockwiseMaskGenerator, RandomMaskGenerator
from .masking import MIMMask
from .mim_views import PIL_INTERPOLATIONS, BEiTMaskedViews

__all__ = ['LoadImageRGB', 'pil_to_rgb', 'BEiTMaskedViews', 'PIL_INTERPOLATIONS',
           'PackMIMInputs', 'MIMMask', 'BlockwiseMaskGenerator', 'RandomMaskGenerator']
