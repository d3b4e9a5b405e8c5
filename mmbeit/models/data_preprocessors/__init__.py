"""Batch-level data handling for pretraining: the MIM data preprocessor (registered in
``mmbeit.registry.MODELS``). The patch masks are drawn per sample in the data pipeline
(``mmbeit.datasets.transforms.MIMMask``)."""
from .mim_data_preprocessor import MIMDataPreprocessor

__all__ = ['MIMDataPreprocessor']
