"""mmbeit's Runner side: ``BEiTRunner`` (strict, weights-only checkpoint loading), hooks,
optimizer wrappers and constructors, and the runtime helpers the tools share."""
from .hooks import *  # noqa: F401,F403
from .optimizers import *  # noqa: F401,F403
from .runner import BEiTRunner  # noqa: F401
