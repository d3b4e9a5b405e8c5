"""mmbeit engine components (optimizer wrapper constructors, hooks; checkpoint loading,
runtime)."""
from .hooks import *  # noqa: F401,F403
from .optimizers import *  # noqa: F401,F403
