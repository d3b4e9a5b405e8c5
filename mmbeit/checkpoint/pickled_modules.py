"""A restricted reader of torch files that hold whole pickled ``nn.Module`` objects.

Some weights are published as pickled modules rather than state dicts (OpenAI's DALL-E
``encoder.pkl`` / ``decoder.pkl``). ``torch.load(weights_only=True)`` refuses them, and a
plain ``torch.load`` would import the authors' package and let the file call any function
it names. This module reads such a file once, for a converter (tools/model_converters/),
and returns plain tensors; nothing at training time uses it.

What the caller allows. :func:`read_pickled` takes the exact qualified names of the module
classes the file may hold (``module_classes``, e.g. ``'dall_e.encoder.Encoder'``). Each
name maps to an inert stand-in class (:class:`PickledModule`): it can only be created
empty (pickle's NEWOBJ, or ``copyreg._reconstructor`` in protocol 1) and receive a dict of
attributes (BUILD). Calling it is refused, it is not an ``nn.Module`` and nothing of it is
called afterwards; :func:`module_state_dict` reads the tensors out of its
``_parameters`` / ``_buffers`` / ``_modules``. Nothing named by the file is imported.

Formats (torch/serialization.py writes both):

* zip (torch >= 1.6): ``torch.load(path, map_location='cpu', weights_only=True)``, torch's
  own restricted unpickler, with the stand-ins allowed under their names for the duration
  of the call (``torch.serialization.safe_globals``). torch keeps one allowlist per
  process, so another thread loading at that moment would see the same inert stand-ins
  for those names; nothing else of the process changes.
* legacy (torch < 1.6, or ``_use_new_zipfile_serialization=False``; OpenAI's files),
  recognised by the pickled magic number it starts with. torch's weights-only unpickler
  cannot read module records there, so :class:`_LegacyUnpickler` does. It admits the
  stand-ins plus :data:`LEGACY_TORCH_GLOBALS` (and their Python 2 spellings, and
  ``torch.cuda.<T>Storage``), each mapped to a safe object of this module: the
  ``OrderedDict`` / ``set`` / ``object`` types, dtype markers for the storage names, and
  small functions in place of ``_rebuild_tensor_v2`` / ``_rebuild_parameter`` /
  ``torch.device`` / ``copyreg._reconstructor`` that check their arguments and only build
  a strided view of a storage, a Parameter, a device or an empty stand-in (backward hooks
  must be empty). Those objects refuse BUILD, so a file cannot alter them. Only torch's
  ``('module', ...)`` records for a stand-in class and ``('storage', ...)`` records are
  accepted as persistent ids. Storages are allocated when first named (in total at most
  the file's size) and filled with the raw bytes after the pickle; every tensor view is
  checked to lie inside its storage, and a file that ends early is reported as truncated.
* A tar archive (the earliest torch releases) is refused; anything else goes to torch's
  weights-only loader as in the zip case, which refuses what a bare pickle names.

Errors name the file: :class:`~mmbeit.checkpoint.UnsafeCheckpointError` for a global,
call or record outside the allowlist (nothing from the file was run);
:class:`~mmbeit.checkpoint.CheckpointReadError` for a truncated, corrupt or otherwise
unexpected file.
"""
import io
import os
import os.path as osp
import pickle
import re
import sys
import tarfile
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn as nn

from .io import CheckpointNotFoundError, CheckpointReadError, UnsafeCheckpointError

__all__ = [
    'PickledModule', 'LEGACY_TORCH_GLOBALS', 'read_pickled', 'module_state_dict',
    'stand_in_class', 'is_legacy_torch_file'
]


class _Refused(pickle.UnpicklingError):
    """Internal: the file asks for a global, call or record outside the allowlist."""


class _Malformed(Exception):
    """Internal: a legacy-format file whose structure is not what torch writes."""


class PickledModule:
    """State of one pickled module: a bag of attributes, nothing more.

    Subclasses (one per allowed name, :func:`stand_in_class`) carry the name in
    ``pickled_as``. Both unpicklers create one with ``cls.__new__(cls)`` and fill it through
    ``__setstate__`` (BUILD). Calling the class (pickle's REDUCE), creating it with
    arguments, or filling it with anything but a dict of str keys is refused.
    """

    pickled_as = ''

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise _Refused(
                f'{cls.pickled_as} is only restored as module state, not created with '
                f'arguments')
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        raise _Refused(
            f'the file calls {self.pickled_as}(...); only its stored state is accepted')

    def __setstate__(self, state):
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _Refused(f'state of {self.pickled_as} is not a dict of attributes')
        self.__dict__.update(state)


_STAND_INS: Dict[str, type] = {}


def stand_in_class(full_name: str) -> type:
    """The inert :class:`PickledModule` subclass that stands for ``full_name`` (one per
    name, created on first use)."""
    if not (isinstance(full_name, str) and re.fullmatch(r'[A-Za-z_][\w.]*\.\w+', full_name)):
        raise ValueError(f'a module class is named by its qualified name '
                         f'("package.module.Class"), got {full_name!r}')
    if full_name not in _STAND_INS:
        name = 'Pickled_' + full_name.replace('.', '_')
        _STAND_INS[full_name] = type(name, (PickledModule, ),
                                     {'pickled_as': full_name, '__module__': __name__})
    return _STAND_INS[full_name]


# ------------------------------------------------------------ torch's legacy format
#
# Layout, as torch/serialization.py writes it (``_legacy_save``) and reads it
# (``_legacy_load``): five pickles one after the other, then raw storage bytes.
#
# 1. MAGIC_NUMBER, 2. PROTOCOL_VERSION (1001), 3. a ``sys_info`` dict (byte order, C type
#    sizes; torch's reader ignores it), 4. the object itself, in which every nn.Module
#    class the first time it occurs and every storage are persistent ids:
#    ``('module', cls, source_file, source)`` and
#    ``('storage', storage_type, key, location, numel, view_metadata)`` (``numel`` counts
#    elements of the storage type's dtype; ``view_metadata`` is ``None``, or, in files of
#    old torch versions, ``(view_key, offset, numel)`` of a slice of that storage),
#    5. the sorted list of storage keys,
#    then for each key in that order an int64 little-endian element count and the
#    storage's bytes, little-endian (``_write_file`` with ``save_size=True``).
#
# Tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
# requires_grad, backward_hooks[, metadata])`` calls, parameters
# ``_rebuild_parameter(tensor, requires_grad, backward_hooks)``, modules
# NEWOBJ + BUILD with their ``__dict__``.

#: torch's constants for its legacy format (torch/serialization.py).
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_MAX_DIMS = 64

_STORAGE_DTYPES = {
    'Double': torch.float64, 'Float': torch.float32, 'Half': torch.float16,
    'BFloat16': torch.bfloat16, 'Long': torch.int64, 'Int': torch.int32,
    'Short': torch.int16, 'Char': torch.int8, 'Byte': torch.uint8, 'Bool': torch.bool,
    'ComplexDouble': torch.complex128, 'ComplexFloat': torch.complex64,
}

#: What a legacy-format file may name besides the caller's module classes (and
#: ``torch.cuda.<T>Storage`` for every ``torch.<T>Storage`` here). Each maps to an object
#: of this module, never to the named one (see :class:`_LegacyUnpickler`).
LEGACY_TORCH_GLOBALS: Tuple[str, ...] = (
    'collections.OrderedDict', 'builtins.set', 'builtins.object', 'copyreg._reconstructor',
    'torch.device', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter',
) + tuple(f'torch.{kind}Storage' for kind in _STORAGE_DTYPES)

# Python 2 spellings that pickle protocols < 3 write for builtins / copyreg.
_PY2_NAMES = {'builtins.set': '__builtin__.set', 'builtins.object': '__builtin__.object',
              'copyreg._reconstructor': 'copy_reg._reconstructor'}


def _short(obj, depth: int = 0) -> str:
    """A short description of an unpickled object for messages (never calls into it)."""
    if isinstance(obj, (str, bytes, int, float, type(None))):
        text = repr(obj)
    elif isinstance(obj, type):
        text = getattr(obj, 'pickled_as', '') or f'{obj.__module__}.{obj.__qualname__}'
    elif isinstance(obj, tuple) and depth < 2:
        text = '(' + ', '.join(_short(v, depth + 1) for v in obj[:6]) + ')'
    else:
        text = f'a {type(obj).__name__}'
    return text if len(text) <= 120 else text[:117] + '...'


def _is_int(value) -> bool:
    return type(value) is int


class _NoBuild:
    """Objects a legacy file can reach but never change: pickle's BUILD is refused."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Refused(f'setting the state of a {type(self).__name__}')


class _SafeCall(_NoBuild):
    """What an allowed function name of a legacy file maps to: one of our own functions."""

    __slots__ = ('name', 'fn')

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)


class _StorageType(_NoBuild):
    """What a ``torch.FloatStorage`` (...) global of a legacy file stands for: a dtype.

    Not a type and not callable, so a file can only hand it to a storage record.
    """

    __slots__ = ('name', 'dtype')

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype


class _LegacyRoot:
    """One storage of a legacy file: allocated when first named, filled after the pickle."""

    __slots__ = ('key', 'dtype', 'numel', 'data')

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data = torch.empty(numel, dtype=dtype)


class _LegacyStorage(_NoBuild):
    """What a storage record unpickles to: ``length`` elements of a root from ``offset``."""

    __slots__ = ('root', 'offset', 'length')

    def __init__(self, root: _LegacyRoot, offset: int, length: int):
        self.root, self.offset, self.length = root, offset, length


class _DataOnlyUnpickler(pickle.Unpickler):
    """Plain data only: any global or persistent id is refused (headers, key list)."""

    def find_class(self, module, name):
        raise _Refused(f'GLOBAL {module}.{name}')

    def persistent_load(self, pid):
        raise _Refused(f'persistent id {_short(pid)} (outside the main pickle)')


class _LegacyUnpickler(_DataOnlyUnpickler):
    """The main pickle of a legacy-format file, admitting exactly an allowlist.

    ``find_class`` maps each allowed module class to its inert stand-in and each of
    :data:`LEGACY_TORCH_GLOBALS` to a container type (``OrderedDict``, ``set``,
    ``object``), a dtype marker (storage types) or a method below (wrapped in a
    :class:`_SafeCall`) that checks its arguments and only builds a tensor view, a
    Parameter, a ``torch.device`` or an empty stand-in; everything else is refused. What
    a file can reach of ours refuses BUILD (:class:`_NoBuild`). ``persistent_load``
    accepts only torch's two record forms. Storages are allocated when first named (their
    total may not exceed the file's size) and filled from the file by
    :meth:`fill_storages` after the pickle, so the tensors built meanwhile are views of
    memory that is filled in place.
    """

    def __init__(self, file, byte_budget: int, stand_ins: Dict[str, type]):
        super().__init__(file)
        self._budget = byte_budget
        self._roots: Dict[str, _LegacyRoot] = {}
        self._views: Dict[str, _LegacyStorage] = {}
        self._stand_in_types = tuple(stand_ins.values())
        table: Dict[str, Any] = dict(stand_ins)
        table.update({
            'collections.OrderedDict': OrderedDict, 'builtins.set': set,
            'builtins.object': object})
        for name, fn in (('copyreg._reconstructor', self._reconstructor),
                         ('torch.device', self._device),
                         ('torch._utils._rebuild_tensor_v2', self._rebuild_tensor_v2),
                         ('torch._utils._rebuild_parameter', self._rebuild_parameter)):
            table[name] = _SafeCall(name, fn)
        for py3, py2 in _PY2_NAMES.items():
            table[py2] = table[py3]
        for kind, dtype in _STORAGE_DTYPES.items():
            for prefix in ('torch.', 'torch.cuda.'):
                name = f'{prefix}{kind}Storage'
                table[name] = _StorageType(name, dtype)
        self._globals = table

    def find_class(self, module, name):
        full = f'{module}.{name}'
        if full not in self._globals:
            raise _Refused(f'GLOBAL {full}')
        return self._globals[full]

    def _is_stand_in(self, cls) -> bool:
        return isinstance(cls, type) and cls in self._stand_in_types

    def persistent_load(self, pid):
        ok = isinstance(pid, tuple) and bool(pid) and isinstance(pid[0], str)
        kind = pid[0] if ok else None
        if kind == 'module' and len(pid) == 4:
            cls = pid[1]
            if not self._is_stand_in(cls):
                raise _Refused(f'module record for {_short(cls)}, not an allowed module class')
            return cls  # source_file, source: torch only compares them with the live class
        if kind == 'storage' and len(pid) == 6:
            return self._storage(*pid[1:])
        raise _Refused(f'persistent id {_short(pid)} (only torch\'s (\'module\', ...) and '
                       f'(\'storage\', ...) records are accepted)')

    def _storage(self, stype, key, location, numel, view) -> _LegacyStorage:
        if not (isinstance(stype, _StorageType) and isinstance(key, str)
                and isinstance(location, str) and _is_int(numel) and numel >= 0):
            raise _Malformed(f'a storage record of an unexpected form ({_short(stype)}, '
                             f'{_short(key)}, {_short(location)}, {_short(numel)})')
        root = self._roots.get(key)
        if root is None:
            nbytes = numel * stype.dtype.itemsize
            if nbytes > self._budget:
                raise _Malformed(f'storage {key!r} declares {nbytes} bytes, more than the '
                                 f'file holds (truncated?)')
            self._budget -= nbytes
            root = self._roots[key] = _LegacyRoot(key, stype.dtype, numel)
        elif root.dtype != stype.dtype or root.numel != numel:
            raise _Malformed(f'storage {key!r} is declared twice, differently')
        if view is None:
            return _LegacyStorage(root, 0, numel)
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and _is_int(view[1]) and _is_int(view[2]) and view[1] >= 0 and view[2] >= 0
                and view[1] + view[2] <= numel):
            raise _Malformed(f'storage {key!r} has a view record out of its bounds')
        found = self._views.setdefault(view[0], _LegacyStorage(root, view[1], view[2]))
        if found.root is not root:
            raise _Malformed(f'storage view {view[0]!r} is declared on two storages')
        return found

    @staticmethod
    def _check_hooks(hooks, what: str) -> None:
        if not isinstance(hooks, dict):
            raise _Malformed(f'{what} with backward hooks of type {_short(hooks)}')
        if hooks:
            raise _Refused(f'{what} with backward hooks attached (functions to run)')

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad,
                           backward_hooks, metadata=None) -> torch.Tensor:
        if not isinstance(storage, _LegacyStorage):
            raise _Malformed(f'a tensor whose storage is a {_short(storage)}')
        self._check_hooks(backward_hooks, 'a tensor')
        if not (metadata is None or (isinstance(metadata, dict) and not metadata)):
            raise _Malformed('a tensor with metadata (conjugate / negative bits)')
        dims_ok = (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
                   and len(size) == len(stride) <= _MAX_DIMS
                   and all(_is_int(v) and 0 <= v < 2**62 for v in (*size, *stride)))
        if not (dims_ok and _is_int(storage_offset) and storage_offset >= 0
                and isinstance(requires_grad, bool)):
            raise _Malformed(f'a tensor record of an unexpected form (offset '
                             f'{_short(storage_offset)}, size {_short(size)}, stride '
                             f'{_short(stride)})')
        extent = 0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if storage_offset + extent > storage.length:
            raise _Malformed(f'a tensor (offset {storage_offset}, size {tuple(size)}, stride '
                             f'{tuple(stride)}) reaching past its storage of '
                             f'{storage.length} elements')
        return storage.root.data.as_strided(tuple(size), tuple(stride),
                                            storage.offset + storage_offset)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks) -> nn.Parameter:
        if type(data) is not torch.Tensor or not isinstance(requires_grad, bool):
            raise _Malformed(f'a parameter of {_short(data)}')
        self._check_hooks(backward_hooks, 'a parameter')
        grad = requires_grad and (data.is_floating_point() or data.is_complex())
        return nn.Parameter(data, requires_grad=grad)

    @staticmethod
    def _device(kind, index=None) -> torch.device:
        if not (isinstance(kind, str) and len(kind) <= 64
                and (index is None or _is_int(index))):
            raise _Malformed(f'a device of {_short(kind)}, {_short(index)}')
        return torch.device(kind) if index is None else torch.device(kind, index)

    def _reconstructor(self, cls, base, state):
        """``copyreg._reconstructor`` (protocols 0/1) for the stand-ins only."""
        if not (self._is_stand_in(cls) and base is object and state is None):
            raise _Refused(f'copyreg._reconstructor of {_short(cls)}, only allowed for '
                           f'the module stand-ins')
        return cls.__new__(cls)

    def fill_storages(self, file, keys) -> None:
        """Read the storages' bytes (after the key list) into the allocated roots."""
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise _Malformed('the storage key list is not a list of str')
        if len(set(keys)) != len(keys) or set(keys) != set(self._roots):
            unlisted = sorted(set(self._roots) - set(keys))[:5]
            unused = sorted(set(keys) - set(self._roots))[:5]
            raise _Malformed(f'the storage key list does not match the storages the tensors '
                             f'use (not listed: {unlisted}; listed, not used: {unused}; '
                             f'{len(keys) - len(set(keys))} duplicates)')
        for key in keys:
            root = self._roots[key]
            head = file.read(8)
            if len(head) != 8:
                raise _Malformed(f'the file ends before storage {key!r} (truncated)')
            numel = int.from_bytes(head, 'little', signed=True)
            if numel != root.numel:
                raise _Malformed(f'storage {key!r} holds {numel} elements, its record '
                                 f'says {root.numel}')
            if not numel:
                continue
            buf = memoryview(root.data.view(torch.uint8).numpy())
            done = 0
            while done < len(buf):
                n = file.readinto(buf[done:])
                if not n:
                    raise _Malformed(f'the file ends inside storage {key!r} after {done} of '
                                     f'{len(buf)} bytes (truncated)')
                done += n


def is_legacy_torch_file(path: str) -> bool:
    """True when the file starts with the pickled magic number of torch's legacy format
    (reads 64 bytes as plain data; nothing is unpickled beyond that)."""
    with open(path, 'rb') as f:
        head = f.read(64)
    try:
        magic = _DataOnlyUnpickler(io.BytesIO(head)).load()
    except Exception:  # not a pickle of plain data: not this format
        return False
    return type(magic) is int and magic == _LEGACY_MAGIC_NUMBER


def _is_plain_tar(path: str) -> bool:
    try:
        with tarfile.open(path, mode='r:'):
            return True
    except (tarfile.TarError, OSError, ValueError):
        return False


# ------------------------------------------------------------------------ errors


def _refused_detail(exc: BaseException) -> str:
    """The line of torch's refusal that names what was refused."""
    text = str(exc)
    match = re.search(r'GLOBAL (\S+)', text)
    if match:
        return f'GLOBAL {match.group(1).rstrip(".")}'
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for key in ('Only persistent_load', 'unrecognized function', 'Can only', 'Unsupported',
                'only restored', 'calls', 'state of'):
        for ln in lines:
            if key in ln:
                return ln
    return lines[-1] if lines else repr(exc)


def _globals_outside_allowlist(path: str, allowed: Sequence[str]) -> str:
    """Every global a zip checkpoint names that neither torch nor the caller allows (an
    opcode scan, nothing is loaded)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a scan is a courtesy for the message; the refusal stands anyway
        return ''
    return ', '.join(sorted(set(found) - set(allowed)))


def _unsafe_error(path: str, what: str, allowed: Sequence[str], detail: str, legacy: bool,
                  note: str = '') -> UnsafeCheckpointError:
    names = ', '.join(allowed) or '(none)'
    if legacy:
        fmt = 'the file (torch\'s legacy format, torch < 1.6)'
        listed = (f'Allowed, as inert stand-ins that are only filled with stored state: '
                  f'{names}; and, each mapped to a checked rebuild function, a dtype marker '
                  f'or a plain container: {", ".join(LEGACY_TORCH_GLOBALS)} (and '
                  f'torch.cuda.<T>Storage).')
    else:
        fmt = 'the file'
        listed = (f'Allowed besides tensors and containers, as inert stand-ins that are '
                  f'only filled with stored state: {names}.')
    return UnsafeCheckpointError(
        f'refusing to read {what} from {path!r}: {fmt} needs Python objects or calls '
        f'outside the allowlist, and unpickling them could run code (nothing from it was '
        f'run). {listed} What was refused: {detail}.{note} If the file comes from a source '
        f'you trust, re-save only its tensors in a separate Python '
        f'(torch.save(module.state_dict(), NEW_PATH)); if it does not, do not use it.')


# ------------------------------------------------------------------------ readers


def _torch_load_restricted(path: str, what: str, stand_ins: Dict[str, type]):
    allowed = list(stand_ins)
    try:
        with torch.serialization.safe_globals([(cls, name) for name, cls in stand_ins.items()]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _refused_detail(exc)
        note = ''
        if zipfile.is_zipfile(path):
            others = _globals_outside_allowlist(path, allowed)
            if others:
                detail += f' (all globals it names outside the allowlist: {others})'
        else:
            note = (' The file is in neither of torch\'s formats (zip, or the legacy format '
                    'of torch < 1.6): it is a bare pickle or not a torch file.')
        raise _unsafe_error(path, what, allowed, detail, legacy=False, note=note) from exc
    except Exception as exc:  # torch's own errors: truncated zip, bad archive, EOF, ...
        raise CheckpointReadError(
            f'cannot read {what} from {path!r} ({osp.getsize(path)} bytes): it is truncated '
            f'or corrupt, or not a torch file ({type(exc).__name__}: '
            f'{str(exc).splitlines()[0] if str(exc) else ""})') from exc


def _legacy_load_restricted(path: str, what: str, stand_ins: Dict[str, type]):
    """Read a legacy-format file through :class:`_LegacyUnpickler` (nothing else runs)."""
    if sys.byteorder != 'little':
        raise CheckpointReadError(f'{path!r}: reading torch\'s legacy format (little-endian '
                                  f'data) is only supported on little-endian machines')
    try:
        with open(path, 'rb') as f:
            magic, version, sys_info = (_DataOnlyUnpickler(f).load() for _ in range(3))
            if magic != _LEGACY_MAGIC_NUMBER or version != _LEGACY_PROTOCOL_VERSION:
                raise _Malformed(f'unexpected header (magic {_short(magic)}, protocol '
                                 f'version {_short(version)})')
            if not isinstance(sys_info, dict):
                raise _Malformed(f'the sys_info header is a {_short(sys_info)}')
            unpickler = _LegacyUnpickler(f, osp.getsize(path), stand_ins)
            obj = unpickler.load()
            unpickler.fill_storages(f, _DataOnlyUnpickler(f).load())
    except _Refused as exc:
        raise _unsafe_error(path, what, list(stand_ins), str(exc), legacy=True) from exc
    except _Malformed as exc:
        raise CheckpointReadError(
            f'cannot read {what} from {path!r} as a file in torch\'s legacy format '
            f'(torch < 1.6): {exc}') from exc
    except Exception as exc:  # the pickle machinery's own errors: EOF, bad opcodes, ...
        raise CheckpointReadError(
            f'cannot read {what} from {path!r} as a file in torch\'s legacy format '
            f'(torch < 1.6): it is truncated or corrupt, or not as torch writes it '
            f'({type(exc).__name__}: {exc})') from exc
    return obj


def read_pickled(path: str, module_classes: Sequence[str], what: str = 'a checkpoint') -> Any:
    """Unpickle a torch file whose pickled modules may only be ``module_classes``.

    Args:
        path: a local file, in torch's zip or legacy format.
        module_classes: qualified names (``'package.module.Class'``) of the module classes
            the file may hold; each becomes an inert :class:`PickledModule` stand-in.
            torch's own classes count too (``'torch.nn.modules.container.Sequential'``).
        what: what the file is, for messages (``'DALL-E encoder weights'``).

    Returns:
        What the file holds, with each pickled module a :class:`PickledModule` (read its
        tensors with :func:`module_state_dict`), tensors as CPU tensors and containers as
        themselves.

    Raises:
        CheckpointNotFoundError: no such file.
        UnsafeCheckpointError: the file names a global, call or record outside the
            allowlist (nothing from it was run).
        CheckpointReadError: truncated, corrupt, a tar archive, or not a torch file.
    """
    path = osp.expanduser(os.fspath(path))
    if not osp.isfile(path):
        where = 'is a folder, not a file' if osp.isdir(path) else 'does not exist'
        raise CheckpointNotFoundError(f'{what} {path!r} {where}')
    stand_ins = {name: stand_in_class(name) for name in module_classes}
    if is_legacy_torch_file(path):
        return _legacy_load_restricted(path, what, stand_ins)
    if not zipfile.is_zipfile(path) and _is_plain_tar(path):
        raise CheckpointReadError(
            f'{path!r} is a tar archive, the format of the earliest torch releases, which '
            f'is not supported; re-save its tensors as a state dict in a Python you trust')
    return _torch_load_restricted(path, what, stand_ins)


def module_state_dict(root: PickledModule, path: str) -> 'OrderedDict[str, torch.Tensor]':
    """The state dict of a pickled module: its ``_parameters`` and persistent ``_buffers``,
    recursively through ``_modules``, as detached contiguous tensors (``nn.Module``'s key
    order and naming).

    Raises:
        CheckpointReadError: the stand-in's tables are not what ``nn.Module`` pickles.
    """
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    what = getattr(root, 'pickled_as', type(root).__name__)

    def bad(where: str, problem: str):
        return CheckpointReadError(f'{path!r}: {where or "<root>"} {problem}; not a module '
                                   f'as torch pickles a {what}')

    def walk(obj: PickledModule, prefix: str, depth: int):
        if depth > 32:
            raise bad(prefix, 'nests modules too deep')
        attrs = vars(obj)
        tables = {k: attrs.get(k, {}) for k in ('_parameters', '_buffers', '_modules')}
        for key, table in tables.items():
            if not isinstance(table, dict):
                raise bad(prefix, f'has a {key} that is a {type(table).__name__}')
        skip = attrs.get('_non_persistent_buffers_set', set())
        for key in ('_parameters', '_buffers'):
            for name, t in tables[key].items():
                if t is None or (key == '_buffers' and name in skip):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise bad(prefix + name, f'is a {type(t).__name__}, not a tensor')
                out[prefix + name] = t.detach().contiguous()
        for name, child in tables['_modules'].items():
            if child is None:
                continue
            if not isinstance(child, PickledModule):
                raise bad(prefix + name, f'is a {type(child).__name__}, not a module')
            walk(child, f'{prefix}{name}.', depth + 1)

    if not isinstance(root, PickledModule):
        raise bad('', f'is a {type(root).__name__}')
    walk(root, '', 0)
    return out
