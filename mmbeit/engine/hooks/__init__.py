"""Training hooks of mmbeit."""
from .codebook_usage import CodebookUsageHook
from .iteration_seed import IterationSeedHook

__all__ = ['CodebookUsageHook', 'IterationSeedHook']
