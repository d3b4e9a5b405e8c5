"""Checkpoint converters: unilm / timm / HF / mmpretrain / mmseg BEiT checkpoints -> the
mmbeit layouts of docs/contracts.md.

``convert(state_dict_or_checkpoint, src, kind=None, strict_target_keys=None)`` returns
``(new_state_dict, ConversionReport)``; the command line front end is
``tools/model_converters/convert_checkpoint.py``.
"""
from .common import KINDS, SOURCES, ConversionError, ConversionReport
from .convert import convert, detect_kind

__all__ = ['convert', 'detect_kind', 'ConversionError',
           'ConversionReport', 'SOURCES', 'KINDS']
