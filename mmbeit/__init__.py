"""mmbeit: the BEiT family (BEiT, BEiT v2, VQ-KD) for the OpenMMLab stack.

Importing mmbeit changes nothing in the process: its registries fill when a config with
``default_scope='mmbeit'`` is built, and checkpoint files are read through
:mod:`mmbeit.checkpoint` by mmbeit's own tools, Runner and APIs only.
"""
from .version import __version__

__all__ = ['__version__']
