"""Batch-level data handling for pretraining: the MIM data preprocessor (registered in
``mmbeit.registry.MODELS``) and the patch-mask generators of masked image modeling
(beit-spec.md section 2, registered in ``mmbeit.registry.TASK_UTILS``)."""
from .mask_generators import BlockwiseMaskGenerator, RandomMaskGenerator
from .mim_data_preprocessor import MIMDataPreprocessor

__all__ = ['BlockwiseMaskGenerator', 'MIMDataPreprocessor', 'RandomMaskGenerator']
