"""mmbeit models: importing this package registers them in ``mmbeit.registry.MODELS``."""
from . import (  # noqa: F401
    algorithms,
    backbones,
    data_preprocessors,
    detectors,
    heads,
    necks,
    tokenizers,
    utils,
)
from .algorithms import *  # noqa: F401,F403
from .backbones import *  # noqa: F401,F403
from .data_preprocessors import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .heads import *  # noqa: F401,F403
from .necks import *  # noqa: F401,F403
from .tokenizers import *  # noqa: F401,F403
from .utils import *  # noqa: F401,F403
