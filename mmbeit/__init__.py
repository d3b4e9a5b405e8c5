"""mmbeit: the BEiT family (BEiT, BEiT v2, VQ-KD) for the OpenMMLab stack."""
# Importing mmbeit makes every checkpoint load weights-only, our runners' included
# (see mmbeit/engine/checkpoint.py).
from .engine import checkpoint as _checkpoint  # noqa: E402,F401,I001
from .version import __version__

__all__ = ['__version__']
