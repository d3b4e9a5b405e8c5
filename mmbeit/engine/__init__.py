"""mmbeit engine components (optimizer wrapper constructors; checkpoint loading, runtime)."""
from .optimizers import *  # noqa: F401,F403
