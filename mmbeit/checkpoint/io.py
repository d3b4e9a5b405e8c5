"""Reading and writing checkpoint files: weights-only, with errors that name the file.

Reading. Every file mmbeit reads goes through :func:`read_checkpoint`, which calls
``torch.load(path, weights_only=True)``: a file may hold tensors, containers and plain
values, and a pickle that would run code is refused (:class:`UnsafeCheckpointError`). The
protection is never turned off. What the files of mmengine's Runner and of unilm's training
scripts hold beyond that is allow-listed for the duration of the call only
(:func:`allowed_checkpoint_globals`; nothing process-wide changes, so code that merely
imports mmbeit loads as it did). Each is a data container whose unpickling only sets
attributes or builds an array:

* ``argparse.Namespace`` (unilm's checkpoints keep the run's arguments under ``args``);

* ``mmengine.logging.HistoryBuffer`` (``message_hub``): created empty, then its
  ``__dict__`` updated with numbers and arrays;
* numpy's array, dtype and scalar reconstruction (``meta`` and the buffers), which torch
  documents as safe to allow;
* ``getattr(HistoryBuffer, name)`` for the public functions of that class (its statistics
  methods), and nothing else: stock mmengine 0.10.7 pickles each buffer's method table
  that way. The name ``builtins.getattr`` is mapped, for this one call, to
  :func:`_history_buffer_method`, which refuses any other object or name; the real
  ``getattr`` is never reachable from a file.

A missing file, a truncated or corrupt one (torch's "failed finding central directory",
"Ran out of input", ...) and an unsafe one each raise their own error naming the file and
what to do (all are :class:`CheckpointError`, a ``ValueError``; the missing-file error is
also a ``FileNotFoundError``).

Writing. :func:`atomic_output` yields a temporary path next to the target and renames it
onto the target only when the block finishes; a crash or a full disk never leaves a
half-written file (or folder) under the final name. :func:`save_checkpoint` is
``torch.save`` through it.
"""
import argparse
import contextlib
import os
import os.path as osp
import pickle
import shutil
import uuid
import zipfile
from typing import Any, Iterator, Optional

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = [
    'CheckpointError', 'CheckpointNotFoundError', 'CheckpointReadError',
    'UnsafeCheckpointError', 'read_checkpoint', 'allowed_checkpoint_globals',
    'ALLOWED_CHECKPOINT_GLOBALS', 'atomic_output', 'save_checkpoint'
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (missing, unreadable, unsafe, not fitting)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CheckpointReadError(CheckpointError):
    """The file exists but is not a readable torch checkpoint (truncated, corrupt, other)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint holds Python objects that weights-only loading refuses."""


def _numpy_globals() -> list:
    found = [np.ndarray, np.dtype]
    multiarray = getattr(np, '_core', None)
    multiarray = (multiarray or np.core).multiarray
    found += [multiarray._reconstruct, multiarray.scalar]
    # numpy >= 1.25 pickles dtypes as instances of these classes (Float64DType, ...).
    found += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith('DType')]
    return found


def _history_buffer_method(obj, name: str):
    """The one ``getattr`` a Runner checkpoint needs: a statistics method of HistoryBuffer."""
    # Only public functions of the class itself: fetching one runs nothing, and the
    # function is not on the allowlist, so the file cannot call it either.
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') \
            and callable(vars(HistoryBuffer).get(name)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refused getattr({obj!r}, {name!r}): a checkpoint may only name the methods of '
        f'mmengine.logging.HistoryBuffer')


#: What checkpoints hold beyond torch's defaults (see the module docstring).
ALLOWED_CHECKPOINT_GLOBALS = [HistoryBuffer, argparse.Namespace] + _numpy_globals() + [
    (_history_buffer_method, 'builtins.getattr')
]


@contextlib.contextmanager
def allowed_checkpoint_globals() -> Iterator[None]:
    """Allow :data:`ALLOWED_CHECKPOINT_GLOBALS` in weights-only loads inside the block only."""
    with torch.serialization.safe_globals(ALLOWED_CHECKPOINT_GLOBALS):
        yield


def _describe_read_failure(path: str, exc: BaseException) -> str:
    size = osp.getsize(path)
    text = str(exc).splitlines()[0].split('. ')[0] if str(exc) else ''
    text = f'{type(exc).__name__}: {text}' if text else type(exc).__name__
    if size == 0:
        what = 'it is empty (0 bytes)'
    elif zipfile.is_zipfile(path):
        what = f'it is a zip archive but not a readable torch checkpoint ({text})'
    elif 'central directory' in str(exc) or isinstance(exc, EOFError):
        what = f'it ends early: the file is truncated (an interrupted download or copy?) ({text})'
    else:
        what = f'it is not a torch checkpoint or is corrupt ({text})'
    return (f'cannot read checkpoint {path!r} ({size} bytes): {what}. Download or copy it '
            f'again, or point at the right file.')


def read_checkpoint(path: str, map_location: Any = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)`` with the extra types above allowed and errors
    that name the file (see the module docstring).

    Raises:
        CheckpointNotFoundError: no such file.
        UnsafeCheckpointError: the file holds Python objects that are not weights.
        CheckpointReadError: truncated, corrupt or not a torch file.
    """
    path = osp.expanduser(os.fspath(path))
    if not osp.isfile(path):
        where = 'is a folder, not a file' if osp.isdir(path) else 'does not exist'
        raise CheckpointNotFoundError(
            f'checkpoint {path!r} {where} (check the path in the config or on the command '
            f'line)')
    try:
        with allowed_checkpoint_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
        refused = [ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln
                   or 'refused' in ln]
        if not refused:
            raise CheckpointReadError(_describe_read_failure(path, exc)) from exc
        raise UnsafeCheckpointError(
            f'refusing to load {path!r}: it holds Python objects that are not weights, and '
            f'unpickling them could run code. mmbeit reads every checkpoint with '
            f'torch.load(weights_only=True) and does not turn that off. If the file comes '
            f'from a source you trust, load it once in a separate Python and re-save only its '
            f'tensors (torch.save(obj["state_dict"] or obj, NEW_PATH)); if it does not, do not '
            f'use it. What torch refused: {refused[0]}') from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ... here
        raise CheckpointReadError(_describe_read_failure(path, exc)) from exc


def _remove(path: str) -> None:
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif osp.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_output(path: str, suffix: Optional[str] = None) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block ends
    without an exception, delete it otherwise.

    The temporary name is hidden and unique (``.<name>.<random>.tmp``, plus ``suffix`` for
    writers that pick a format from the extension, e.g. matplotlib). A folder may be
    written too; an existing folder at ``path`` is then replaced only after the new one is
    complete.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.{uuid.uuid4().hex[:12]}.tmp'
                   + (suffix or ''))
    try:
        yield tmp
        if osp.isdir(tmp) and osp.isdir(path):
            old = tmp + '.old'
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def save_checkpoint(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
