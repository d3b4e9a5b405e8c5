"""Checkpoint converters: unilm / timm / HF / mmpretrain / mmseg BEiT checkpoints -> the
mmbeit layouts of docs/contracts.md.

``convert(state_dict_or_checkpoint, src, kind=None, strict_target_keys=None)`` returns
``(new_state_dict, ConversionReport)``; the command line front end is
``tools/model_converters/convert_checkpoint.py``.

The other direction, mmbeit -> timm / Hugging Face / ONNX, is ``export.py``
(``export_state_dict``, ``export_onnx``; tool ``tools/model_converters/export_checkpoint.py``,
docs/export.md).
"""
from .common import KINDS, SOURCES, ConversionError, ConversionReport
from .convert import convert, detect_kind
from .export import (
    EXPORT_KINDS,
    TARGETS,
    ExportError,
    ExportResult,
    export_onnx,
    export_state_dict,
    hf_segmentation_blockers,
    settings_from_model,
    timm_model_args,
    write_export,
)

__all__ = ['convert', 'detect_kind', 'ConversionError',
           'ConversionReport', 'SOURCES', 'KINDS', 'export_state_dict', 'export_onnx',
           'settings_from_model', 'hf_segmentation_blockers', 'timm_model_args',
           'write_export', 'ExportError', 'ExportResult', 'TARGETS', 'EXPORT_KINDS']
