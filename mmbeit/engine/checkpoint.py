"""Weights-only checkpoint loading for everything mmbeit reads, our own runs included.

torch >= 2.6 unpickles with ``weights_only=True`` by default: a file can then hold only
tensors, containers and plain values, and a pickle crafted to run code is refused. Stock
mmengine checkpoints hold a few more types (``HistoryBuffer`` objects and numpy arrays
and scalars in ``message_hub`` / ``meta``), so ``--resume`` fails on torch 2.13, and the
usual "fix" (torch's environment switch that forces full unpickling) turns it off for
every file, weights downloaded from strangers included.

mmbeit keeps the protection on for every file and instead allow-lists exactly the types
a Runner checkpoint needs. Each is a data container whose unpickling only sets
attributes or builds an array; none runs code:

* ``mmengine.logging.HistoryBuffer``: its constructor (no arguments) and an update of its
  ``__dict__`` with plain numbers and arrays,
* numpy's array and scalar reconstruction (``_reconstruct``, ``ndarray``, ``dtype`` and
  the dtype classes, ``scalar``), which torch documents as safe to allow.

As mmengine pickles it, a ``HistoryBuffer`` also carries its statistics methods, stored as
``getattr(HistoryBuffer, 'mean')`` calls; allowing ``getattr`` would let any file call
anything. So mmbeit changes how a buffer is *saved* (``copyreg``, process-wide once mmbeit
is imported): as ``HistoryBuffer()`` plus its data, the constructor restoring the methods.
Checkpoints written by our runs therefore load weights-only; one written by plain mmengine
is refused like any other file that needs more than data.

The local-file loader of mmengine's ``CheckpointLoader`` (scheme prefix ``''``) is
replaced, through its public ``register_scheme`` hook, by one that passes
``weights_only=True`` explicitly and turns a refusal into an error that names the file
and says what to do. So ``init_cfg=dict(type='Pretrained')``, ``load_from``, ``--resume``
and ``tools/test.py CKPT`` all go through the same weights-only path.
"""
import copyreg
import os
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

__all__ = ['SAFE_CHECKPOINT_GLOBALS', 'UnsafeCheckpointError', 'load_weights_only', 'save_atomic']


def _numpy_globals() -> list:
    found = [np.ndarray, np.dtype]
    multiarray = getattr(np, '_core', np.core).multiarray
    found += [multiarray._reconstruct, multiarray.scalar]
    # numpy >= 1.25 pickles dtypes as instances of these classes (Float64DType, ...).
    found += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith('DType')]
    return found


_HISTORY_BUFFER_DATA = ('max_length', '_log_history', '_count_history')


def _reduce_history_buffer(buf: HistoryBuffer):
    """Pickle a HistoryBuffer as its class, no arguments, and its data (no methods)."""
    return HistoryBuffer, (), {k: v for k, v in vars(buf).items() if k in _HISTORY_BUFFER_DATA}


copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
SAFE_CHECKPOINT_GLOBALS = [HistoryBuffer] + _numpy_globals()
torch.serialization.add_safe_globals(SAFE_CHECKPOINT_GLOBALS)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds Python objects that weights-only loading refuses."""


def load_weights_only(filename: str, map_location=None):
    """``torch.load(filename, weights_only=True)`` with an error a person can act on."""
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message starts with generic advice; keep the line naming the offender.
        lines = [ln.strip() for ln in str(exc).splitlines()]
        detail = next((ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln), lines[0])
        raise UnsafeCheckpointError(
            f'Refusing to load {filename!r}: it holds Python objects that are not weights, '
            f'and unpickling them could run code. mmbeit loads every checkpoint with '
            f'torch.load(weights_only=True) and does not turn that off. If the file comes '
            f'from a source you trust, load it once in a separate Python and re-save only its '
            f'tensors (torch.save(obj["state_dict"] or obj, NEW_PATH)); if it does not, do '
            f'not use it. What torch refused: {detail}') from exc


@CheckpointLoader.register_scheme(prefixes='', force=True)
def _load_from_local(filename: str, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist (check the path in '
                                f'the config or on the command line)')
    return load_weights_only(filename, map_location)


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to ``path + '.tmp'``, then rename onto ``path``: a crash or a full
    disk never leaves a half-written file under the final name."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
