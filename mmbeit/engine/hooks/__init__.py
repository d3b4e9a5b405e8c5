"""Training hooks of mmbeit."""
from .codebook_usage import CodebookUsageHook

__all__ = ['CodebookUsageHook']
