"""mmbeit models: importing this package registers them in ``mmbeit.registry.MODELS``."""
from . import backbones, tokenizers, utils  # noqa: F401
from .backbones import *  # noqa: F401,F403
from .tokenizers import *  # noqa: F401,F403
from .utils import *  # noqa: F401,F403
