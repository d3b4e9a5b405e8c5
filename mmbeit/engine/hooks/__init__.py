"""Training hooks of mmbeit."""
from .async_runtime_info import AsyncRuntimeInfoHook
from .codebook_usage import CodebookUsageHook
from .iteration_seed import IterationSeedHook
from .knn_monitor import KNNMonitorHook

__all__ = ['AsyncRuntimeInfoHook', 'CodebookUsageHook', 'IterationSeedHook', 'KNNMonitorHook']
