"""Optimiser-wrapper constructors and wrappers for mmbeit."""
from .layer_decay_constructor import LayerDecayOptimWrapperConstructor
from .mixed_precision import MixedPrecisionOptimWrapper, resolve_amp_dtype

__all__ = ['LayerDecayOptimWrapperConstructor', 'MixedPrecisionOptimWrapper',
           'resolve_amp_dtype']
