"""Tests for mmbeit/checkpoint/pickled_modules.py: the restricted reader of torch files that
hold whole pickled modules (OpenAI's DALL-E ``encoder.pkl`` / ``decoder.pkl``).

The files are written by a stand-in ``dall_e`` package (tests/_fake_dall_e.py) that is
gone before they are read; crafted files are written with pickle and by hand in torch's
legacy layout (torch/serialization.py). Every crafted payload must be refused without
running anything.
"""
import io
import os
import pickle
import pickletools
import sys
import tarfile
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from _fake_dall_e import DALLE_CLASSES, FORMATS, write_openai_files

from mmbeit.checkpoint import CheckpointNotFoundError, CheckpointReadError, UnsafeCheckpointError
from mmbeit.checkpoint.pickled_modules import (
    PickledModule,
    module_state_dict,
    read_pickled,
    stand_in_class,
)

pytestmark = pytest.mark.usefixtures('one_thread')


def read(path, classes=DALLE_CLASSES):
    return read_pickled(str(path), classes, what='DALL-E encoder weights')


@pytest.fixture(scope='module')
def openai_files(tmp_path_factory):
    return write_openai_files(tmp_path_factory.mktemp('openai'))


# --------------------------------------------------------------------------- OpenAI files


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('part', ['encoder', 'decoder'])
def test_openai_pickle_reads_every_tensor(openai_files, part, fmt):
    root = read(openai_files['files'][fmt, part])
    assert isinstance(root, PickledModule) and not isinstance(root, nn.Module)
    assert root.pickled_as == f'dall_e.{part}.{part.capitalize()}'
    assert root.n_hid == 8 and root.vocab_size == 32  # plain attributes come through
    sd = module_state_dict(root, 'f')
    expected = openai_files['state'][part]
    assert isinstance(sd, OrderedDict)
    assert list(sd) == list(expected)
    for key, value in expected.items():
        assert type(sd[key]) is torch.Tensor and sd[key].is_contiguous()
        assert not sd[key].requires_grad
        assert torch.equal(sd[key], value), key
    assert 'dall_e' not in sys.modules  # nothing of OpenAI's package was imported


@pytest.mark.parametrize('fmt', FORMATS)
def test_class_outside_the_callers_allowlist_refused(openai_files, fmt):
    """The allowlist is the caller's: without the decoder's classes a decoder file is
    refused, naming the class."""
    path = openai_files['files'][fmt, 'decoder']
    encoder_only = [c for c in DALLE_CLASSES if not c.startswith('dall_e.decoder.')]
    with pytest.raises(UnsafeCheckpointError) as info:
        read(path, encoder_only)
    assert 'dall_e.decoder.Decoder' in str(info.value) and str(path) in str(info.value)


def test_allowlist_holds_only_while_reading(openai_files):
    read(openai_files['files']['zip', 'encoder'])
    names = {g[1] for g in torch.serialization.get_safe_globals() if isinstance(g, tuple)}
    assert not names & set(DALLE_CLASSES)
    assert stand_in_class('dall_e.encoder.Encoder') is stand_in_class('dall_e.encoder.Encoder')
    with pytest.raises(ValueError, match='qualified name'):
        stand_in_class('Encoder')


def test_missing_file_and_bad_module_tables(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match='nope.pkl'):
        read(tmp_path / 'nope.pkl')
    module = stand_in_class('dall_e.encoder.Encoder').__new__(
        stand_in_class('dall_e.encoder.Encoder'))
    module.__setstate__({'_parameters': {'w': 'text'}})
    with pytest.raises(CheckpointReadError, match="'f.pkl': w is a str, not a tensor"):
        module_state_dict(module, 'f.pkl')
    module.__setstate__({'_parameters': {}, '_modules': {'child': OrderedDict()}})
    with pytest.raises(CheckpointReadError, match='child is a OrderedDict, not a module'):
        module_state_dict(module, 'f.pkl')


# --------------------------------------------------------------------------- malicious files


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class _EvalCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f'open({str(self.marker)!r}, "w").write("x")',)


@pytest.mark.parametrize('payload', [_SystemCall, _EvalCall])
@pytest.mark.parametrize('container', ['raw_pickle', 'torch_zip', 'inside_state_dict',
                                       'torch_legacy', 'legacy_inside_state_dict'])
def test_malicious_file_refused(tmp_path, payload, container):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'encoder.pkl'
    evil = payload(marker)
    legacy = dict(_use_new_zipfile_serialization=False)
    if container == 'raw_pickle':
        with open(path, 'wb') as f:
            pickle.dump(evil, f, protocol=2)
    elif container == 'torch_zip':
        torch.save(evil, path)
    elif container == 'inside_state_dict':
        torch.save({'state_dict': {'blocks.input.w': torch.zeros(1), 'x': evil}}, path)
    elif container == 'torch_legacy':
        torch.save(evil, path, **legacy)
    else:
        torch.save({'state_dict': {'blocks.input.w': torch.zeros(1), 'x': evil}}, path,
                   **legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        read(path)
    msg = str(info.value)
    assert str(path) in msg
    assert ('system' in msg) if payload is _SystemCall else ('eval' in msg)
    assert isinstance(info.value, pickle.UnpicklingError)  # what callers of pickle catch
    assert not marker.exists()


def test_refusal_holds_under_torch_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker, path = tmp_path / 'pwned', tmp_path / 'encoder.pkl'
    torch.save(_SystemCall(marker), path)
    with pytest.raises(UnsafeCheckpointError):
        read(path)
    assert not marker.exists()


def _pickle_calling(global_name: str) -> bytes:
    """Protocol-2 pickle: GLOBAL module\\nname, ('x',), REDUCE, STOP."""
    module, name = global_name.rsplit('.', 1)
    return (b'\x80\x02c' + module.encode() + b'\n' + name.encode() + b'\n'
            + b'X\x01\x00\x00\x00x\x85R.')


def test_stand_in_cannot_be_called(tmp_path):
    """A file naming an allowed class but calling it (REDUCE) is refused."""
    path = tmp_path / 'encoder.pkl'
    path.write_bytes(_pickle_calling('dall_e.encoder.Encoder'))
    with pytest.raises(UnsafeCheckpointError, match='dall_e.encoder.Encoder is only restored'):
        read(path)


def test_other_module_class_refused(tmp_path):
    path = tmp_path / 'encoder.pkl'
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match='torch.nn.modules.linear.Linear'):
        read(path)


# --------------------------------------------------------------------------- legacy format


class _Call:
    """Pickles as ``fn(*args)`` (pickle's REDUCE)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _Pid:
    """Pickles as the persistent id ``pid`` (written by :func:`_write_legacy`)."""

    def __init__(self, *pid):
        self.pid = pid


def _write_legacy(path, obj=None, storages=(), main: bytes = b'', keys=None):
    """torch's legacy layout written by hand (torch/serialization.py ``_legacy_save``).

    Magic number, protocol version and sys_info pickles; the main pickle (``obj`` with
    :class:`_Pid` objects as persistent ids, or the raw bytes ``main``); the list of storage
    keys; then per storage an int64 little-endian element count and its bytes.
    ``storages``: (key, numel, bytes) triples.
    """

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return o.pid if isinstance(o, _Pid) else None

    with open(path, 'wb') as f:
        for head in (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION,
                     {'protocol_version': 1001, 'little_endian': True}):
            pickle.dump(head, f, protocol=2)
        if main:
            f.write(main)
        else:
            Pickler(f, protocol=2).dump(obj)
        pickle.dump([k for k, _, _ in storages] if keys is None else keys, f, protocol=2)
        for _, numel, data in storages:
            f.write(numel.to_bytes(8, 'little', signed=True) + data)


def _float_bytes(values) -> bytes:
    return torch.tensor(values, dtype=torch.float32).numpy().tobytes()


def _tensor_call(pid, offset, size, stride, hooks=None):
    return _Call(torch._utils._rebuild_tensor_v2, _Pid(*pid), offset, size, stride, False,
                 OrderedDict() if hooks is None else hooks)


def test_legacy_views_offsets_and_dtypes(tmp_path):
    """torch's own legacy files: tensors sharing a storage at offsets and strides, a
    Parameter over a slice of it, half / int / bool / empty tensors."""
    base = torch.arange(10.)
    obj = OrderedDict(
        view=base[2:8].view(2, 3).t(),  # offset 2, strides (1, 3)
        base=base,
        param=nn.Parameter(base[1:5]),  # offset 1, same storage
        half=torch.randn(3, 2, dtype=torch.half)[:, 1],  # stride 2
        long=torch.arange(6).view(2, 3)[:, 1:],
        flag=torch.tensor([True, False, True]),
        empty=torch.zeros(0, 3))
    for protocol in (1, 2):
        path = tmp_path / f'sd_p{protocol}.pth'
        torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
        with open(path, 'rb') as f:
            assert pickle.load(f) == torch.serialization.MAGIC_NUMBER  # the legacy format
        sd = read(path)
        assert list(sd) == list(obj)
        for key, value in obj.items():
            assert sd[key].dtype == value.dtype and type(sd[key]) is type(value)
            assert torch.equal(sd[key], value.detach()), key
        assert sd['param'].untyped_storage().data_ptr() == \
            sd['base'].untyped_storage().data_ptr()  # one storage, as saved


def test_legacy_layout_by_hand(tmp_path):
    """A file written from the layout alone reads back: offset / stride, storage views."""
    path = tmp_path / 'sd.pth'
    pid = ('storage', torch.FloatStorage, 'k0', 'cuda:0', 6, None)
    view_pid = ('storage', torch.FloatStorage, 'k0', 'cuda:0', 6, ('k0-view', 2, 3))
    obj = {'t': _tensor_call(pid, 1, (2, 2), (1, 2)),
           'v': _tensor_call(view_pid, 1, (2,), (1,)),
           'p': _Call(torch._utils._rebuild_parameter, _tensor_call(pid, 0, (3,), (2,)),
                      True, OrderedDict())}
    _write_legacy(path, obj, [('k0', 6, _float_bytes([0, 1, 2, 3, 4, 5]))])
    sd = read(path)
    assert torch.equal(sd['t'], torch.tensor([[1., 3.], [2., 4.]]))
    assert torch.equal(sd['v'], torch.tensor([3., 4.]))  # view from 2, then offset 1
    assert torch.equal(sd['p'], torch.tensor([0., 2., 4.]))
    assert isinstance(sd['p'], nn.Parameter) and sd['p'].requires_grad  # as the record says


_STORAGE = ('storage', torch.FloatStorage, 'k0', 'cpu', 2, None)
_EVIL_RECORDS = {
    'module_class_not_allowed': (_Pid('module', OrderedDict, None, None), 'OrderedDict'),
    'unknown_record': (_Pid('evil', 'posix.system'), "'evil'"),
    'storage_type_not_allowed': (
        _Pid('storage', os.system, 'k0', 'cpu', 2, None), 'GLOBAL posix.system'),
    'reconstructor_of_other_class': (
        _Call(__import__('copyreg')._reconstructor, OrderedDict, object, None),
        '_reconstructor of collections.OrderedDict'),
    'backward_hooks': (_tensor_call(_STORAGE, 0, (2,), (1,), hooks={'h': 1}),
                       'backward hooks'),
}


@pytest.mark.parametrize('case', sorted(_EVIL_RECORDS))
def test_legacy_records_outside_allowlist_refused(tmp_path, case):
    obj, named = _EVIL_RECORDS[case]
    path = tmp_path / 'encoder.pkl'
    _write_legacy(path, {'x': obj}, [('k0', 2, _float_bytes([1, 2]))])
    with pytest.raises(UnsafeCheckpointError) as info:
        read(path)
    msg = str(info.value)
    assert str(path) in msg and named in msg and 'legacy format' in msg


def test_legacy_module_classes(tmp_path, openai_files):
    """A module class outside the allowlist, and a call of an allowed one, are refused."""
    path = tmp_path / 'encoder.pkl'
    torch.save(nn.Sequential(nn.Linear(2, 2)), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match='GLOBAL torch.nn.modules.linear.Linear'):
        read(path)
    _write_legacy(path, main=_pickle_calling('dall_e.encoder.Encoder'))
    with pytest.raises(UnsafeCheckpointError, match='dall_e.encoder.Encoder is only restored'):
        read(path)


def _unicode(text: str) -> bytes:
    return b'X' + len(text).to_bytes(4, 'little') + text.encode()


_STORAGE_PID = (b'(' + _unicode('storage') + b'ctorch\nFloatStorage\n' + _unicode('k0')
                + _unicode('cpu') + b'K\x02Nt' + b'Q')
_BUILD_TARGETS = {  # opcodes that put the object on the stack
    'allowed_function': b'ctorch\ndevice\n',
    'stand_in_class': b'cdall_e.encoder\nEncoder\n',
    'storage_record': _STORAGE_PID,
}


@pytest.mark.parametrize('target', sorted(_BUILD_TARGETS))
def test_legacy_build_on_allowed_objects_changes_nothing(tmp_path, target):
    """BUILD (set state) on what an allowed name or record unpickles to is an error."""
    state = (b'N}(' + _unicode('pickled_as') + _unicode('x') + _unicode('length')
             + b'J\x00\x00\x00\x01u\x86')  # (None, {pickled_as: 'x', length: 2**24})
    path = tmp_path / 'encoder.pkl'
    _write_legacy(path, main=b'\x80\x02' + _BUILD_TARGETS[target] + state + b'b.',
                  storages=[('k0', 2, _float_bytes([1, 2]))])
    with pytest.raises((UnsafeCheckpointError, CheckpointReadError)) as info:
        read(path)
    assert str(path) in str(info.value)
    stand_in = stand_in_class('dall_e.encoder.Encoder')
    assert stand_in.pickled_as == 'dall_e.encoder.Encoder' and not hasattr(stand_in, 'length')


_MALFORMED = {
    'past_the_storage': ({'t': _tensor_call(_STORAGE, 1, (2,), (1,))}, None, 'reaching past'),
    'more_than_the_file': (
        {'t': _tensor_call(('storage', torch.FloatStorage, 'k0', 'cpu', 10**9, None), 0,
                           (2,), (1,))}, None, 'more than the file holds'),
    'key_list_mismatch': ({'t': _tensor_call(_STORAGE, 0, (2,), (1,))}, ['k1'],
                          'does not match'),
}


@pytest.mark.parametrize('case', sorted(_MALFORMED))
def test_legacy_malformed_named(tmp_path, case):
    obj, keys, named = _MALFORMED[case]
    path = tmp_path / 'encoder.pkl'
    _write_legacy(path, obj, [('k0', 2, _float_bytes([1, 2]))], keys=keys)
    with pytest.raises(CheckpointReadError, match=named):
        read(path)


def _pickle_ends(data: bytes):
    """Offsets just past each of the five pickles of a legacy file (opcodes, not loaded)."""
    f, ends = io.BytesIO(data), []
    for _ in range(5):
        for _op in pickletools.genops(f):
            pass
        ends.append(f.tell())
    return ends


@pytest.mark.parametrize('where', ['version', 'main_pickle', 'key_list', 'storage_count',
                                   'storage_data'])
def test_legacy_truncated_file(tmp_path, openai_files, where):
    data = openai_files['files']['legacy', 'encoder'].read_bytes()
    ends = _pickle_ends(data)
    cut = dict(version=ends[0] + 2, main_pickle=ends[3] - 7, key_list=ends[4] - 3,
               storage_count=ends[4] + 5, storage_data=len(data) - 1)[where]
    path = tmp_path / 'encoder.pkl'
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointReadError, match='truncated') as info:
        read(path)
    assert str(path) in str(info.value)


def test_tar_format_refused(tmp_path):
    path = tmp_path / 'encoder.pkl'
    member = tmp_path / 'pickle'
    member.write_bytes(pickle.dumps({'blocks.input.w': 1}))
    with tarfile.open(path, 'w:') as tar:
        tar.add(member, arcname='pickle')
    with pytest.raises(CheckpointReadError, match='tar archive'):
        read(path)




def test_zip_truncated_file_named(tmp_path, openai_files):
    data = openai_files['files']['zip', 'encoder'].read_bytes()
    path = tmp_path / 'encoder.pkl'
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointReadError, match='truncated or corrupt') as info:
        read(path)
    assert str(path) in str(info.value) and f'({len(data) // 2} bytes)' in str(info.value)
