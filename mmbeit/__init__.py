"""mmbeit: the BEiT family (BEiT, BEiT v2, VQ-KD) for the OpenMMLab stack."""
from .version import __version__

__all__ = ['__version__']
