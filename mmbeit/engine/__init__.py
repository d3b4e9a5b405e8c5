"""mmbeit engine components (optimiser constructors, hooks)."""
from .optimizers import *  # noqa: F401,F403
