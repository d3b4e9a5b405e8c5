"""Transition shim (removed once every caller imports :mod:`mmbeit.checkpoint`)."""
from mmbeit.checkpoint import UnsafeCheckpointError  # noqa: F401
from mmbeit.checkpoint import read_checkpoint as load_weights_only  # noqa: F401
from mmbeit.checkpoint import save_checkpoint as save_atomic  # noqa: F401
