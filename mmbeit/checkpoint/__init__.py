"""The one checkpoint layer: every file mmbeit reads or writes goes through here.

* :mod:`.io`: :func:`read_checkpoint` (weights-only, errors that name the file),
  :func:`atomic_output` / :func:`save_checkpoint` (no half-written files).
* :mod:`.state`: :func:`unwrap_state_dict` (the one container rule), :func:`take_prefix`,
  :func:`load_state_dict_checked` (the one comparison of a file with a model, and its
  :class:`LoadReport`).

It imports only torch, numpy and mmengine: every other part of mmbeit may use it
(docs/architecture.md). The policy is written down in docs/checkpoints.md.
"""
from .io import (
    ALLOWED_CHECKPOINT_GLOBALS,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointReadError,
    UnsafeCheckpointError,
    allowed_checkpoint_globals,
    atomic_output,
    read_checkpoint,
    save_checkpoint,
)
from .state import (
    CONTAINER_KEYS,
    CheckpointMismatchError,
    LoadReport,
    format_keys,
    load_state_dict_checked,
    note_adapted,
    note_dropped,
    take_prefix,
    unwrap_state_dict,
)


def read_state_dict(path: str, prefix: str = '', map_location='cpu'):
    """:func:`read_checkpoint`, :func:`unwrap_state_dict`, then the keys under ``prefix``
    (all keys when ``prefix`` is empty). An error names the file."""
    try:
        state_dict = unwrap_state_dict(read_checkpoint(path, map_location))[0]
    except CheckpointError as exc:
        if str(path) in str(exc):
            raise
        raise CheckpointReadError(f'{path!r}: {exc}') from exc
    return take_prefix(state_dict, prefix) if prefix else state_dict


__all__ = [
    'CheckpointError', 'CheckpointNotFoundError', 'CheckpointReadError',
    'UnsafeCheckpointError', 'CheckpointMismatchError', 'read_checkpoint', 'read_state_dict',
    'allowed_checkpoint_globals', 'ALLOWED_CHECKPOINT_GLOBALS', 'atomic_output',
    'save_checkpoint', 'unwrap_state_dict', 'take_prefix', 'load_state_dict_checked',
    'LoadReport', 'note_adapted', 'note_dropped', 'CONTAINER_KEYS', 'format_keys'
]
