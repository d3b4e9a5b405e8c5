"""Tests for mmbeit/models/tokenizers/dall_e.py (unilm dall_e: DALL-E dVAE, the BEiT v1 target).

Independent references: mmpretrain's ``DALLEEncoder`` (mmpretrain.models.selfsup.cae,
registered there as 'DALL-E') for the encoder's numbers and key layout, and a stand-in
``dall_e`` package written below (OpenAI's class, attribute and parameter names, plain
nn.Modules instead of attrs classes) for OpenAI's pickled-module files.
"""
import io
import os
import pickle
import pickletools
import shutil
import sys
import tarfile
import textwrap
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmbeit.engine.checkpoint import UnsafeCheckpointError
from mmbeit.models.tokenizers.dall_e import (
    ALLOWED_PICKLE_GLOBALS,
    DALLEBlock,
    DALLEConv,
    DALLEDecoder,
    DALLEEncoder,
    DALLETokenizer,
    DALLEWeightsError,
    UnsafePickleError,
    load_dalle_weights,
    map_pixels,
    unmap_pixels,
)
from mmbeit.registry import MODELS

TINY_ENC = dict(n_hid=8, n_blk_per_group=1, vocab_size=32)
TINY_DEC = dict(n_init=8, n_hid=8, n_blk_per_group=1)


# One intra-op thread (tests/conftest.py): tiny ops run faster so, also on a busy machine.
pytestmark = pytest.mark.usefixtures('one_thread')


# --------------------------------------------------------------------------- fake dall_e

_UTILS = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Conv2d(nn.Module):
    def __init__(self, n_in, n_out, kw, use_float16=True, device=torch.device('cpu'),
                 requires_grad=False):
        super().__init__()
        self.n_in, self.n_out, self.kw = n_in, n_out, kw
        self.use_float16, self.device, self.requires_grad = use_float16, device, requires_grad
        w = torch.randn(n_out, n_in, kw, kw) / (n_in * kw * kw) ** 0.5
        b = 0.1 * torch.randn(n_out)  # non-zero, so that biases are checked too
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)
'''

_BLOCKS = '''
from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn

from dall_e.utils import Conv2d


class {block}(nn.Module):
    def __init__(self, n_in, n_out, n_layers, device=None, requires_grad=False):
        super().__init__()
        self.n_in, self.n_out, self.n_layers = n_in, n_out, n_layers
        self.device, self.requires_grad = device, requires_grad
        self.n_hid = n_out // 4
        self.post_gain = 1 / (n_layers ** 2)
        conv = partial(Conv2d, device=device, requires_grad=requires_grad)
        self.id_path = conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        k = {kernels}
        w = (n_in, self.n_hid, self.n_hid, self.n_hid, n_out)
        self.res_path = nn.Sequential(OrderedDict(sum(
            [[(f'relu_{{i + 1}}', nn.ReLU()), (f'conv_{{i + 1}}', conv(w[i], w[i + 1], k[i]))]
             for i in range(4)], [])))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)
'''

_ENCODER = _BLOCKS.format(block='EncoderBlock', kernels=(3, 3, 3, 1)) + '''

class Encoder(nn.Module):
    group_count = 4

    def __init__(self, n_hid=256, n_blk_per_group=2, input_channels=3, vocab_size=8192,
                 device=torch.device('cpu'), requires_grad=False, use_mixed_precision=True):
        super().__init__()
        self.n_hid, self.n_blk_per_group = n_hid, n_blk_per_group
        self.input_channels, self.vocab_size = input_channels, vocab_size
        self.device, self.requires_grad = device, requires_grad
        self.use_mixed_precision = use_mixed_precision
        n_layers = self.group_count * n_blk_per_group
        blk = partial(EncoderBlock, n_layers=n_layers, device=device,
                      requires_grad=requires_grad)
        items = [('input', Conv2d(input_channels, n_hid, 7))]
        widths = [n_hid, n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]
        for g in range(1, 5):
            group = [(f'block_{i + 1}', blk(widths[g - 1] if i == 0 else widths[g], widths[g]))
                     for i in range(n_blk_per_group)]
            if g < 4:
                group.append(('pool', nn.MaxPool2d(kernel_size=2)))
            items.append((f'group_{g}', nn.Sequential(OrderedDict(group))))
        items.append(('output', nn.Sequential(OrderedDict([
            ('relu', nn.ReLU()),
            ('conv', Conv2d(8 * n_hid, vocab_size, 1, use_float16=False))]))))
        self.blocks = nn.Sequential(OrderedDict(items))

    def forward(self, x):
        return self.blocks(x)
'''

_DECODER = _BLOCKS.format(block='DecoderBlock', kernels=(1, 3, 3, 3)) + '''

class Decoder(nn.Module):
    group_count = 4

    def __init__(self, n_init=128, n_hid=256, n_blk_per_group=2, output_channels=3,
                 vocab_size=8192, device=torch.device('cpu'), requires_grad=False,
                 use_mixed_precision=True):
        super().__init__()
        self.n_init, self.n_hid, self.n_blk_per_group = n_init, n_hid, n_blk_per_group
        self.output_channels, self.vocab_size = output_channels, vocab_size
        self.device, self.requires_grad = device, requires_grad
        self.use_mixed_precision = use_mixed_precision
        n_layers = self.group_count * n_blk_per_group
        blk = partial(DecoderBlock, n_layers=n_layers, device=device,
                      requires_grad=requires_grad)
        items = [('input', Conv2d(vocab_size, n_init, 1, use_float16=False))]
        widths = [n_init, 8 * n_hid, 4 * n_hid, 2 * n_hid, n_hid]
        for g in range(1, 5):
            group = [(f'block_{i + 1}', blk(widths[g - 1] if i == 0 else widths[g], widths[g]))
                     for i in range(n_blk_per_group)]
            if g < 4:
                group.append(('upsample', nn.Upsample(scale_factor=2, mode='nearest')))
            items.append((f'group_{g}', nn.Sequential(OrderedDict(group))))
        items.append(('output', nn.Sequential(OrderedDict([
            ('relu', nn.ReLU()), ('conv', Conv2d(n_hid, 2 * output_channels, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(items))

    def forward(self, x):
        return self.blocks(x)
'''


def _drop_dall_e_modules():
    for name in list(sys.modules):
        if name == 'dall_e' or name.startswith('dall_e.'):
            del sys.modules[name]


@pytest.fixture(scope='module')
def openai_files(tmp_path_factory):
    """OpenAI-style whole-module pickles of a tiny encoder/decoder, plus references.

    The fake ``dall_e`` package is importable only while the files are written; it is then
    removed from sys.modules, sys.path and the disk, so loading cannot use it.
    """
    root = tmp_path_factory.mktemp('openai')
    src = root / 'src'
    (src / 'dall_e').mkdir(parents=True)
    (src / 'dall_e' / '__init__.py').write_text('')
    (src / 'dall_e' / 'utils.py').write_text(textwrap.dedent(_UTILS))
    (src / 'dall_e' / 'encoder.py').write_text(textwrap.dedent(_ENCODER))
    (src / 'dall_e' / 'decoder.py').write_text(textwrap.dedent(_DECODER))
    _drop_dall_e_modules()
    sys.path.insert(0, str(src))
    try:
        import importlib
        enc_mod = importlib.import_module('dall_e.encoder')
        dec_mod = importlib.import_module('dall_e.decoder')
        torch.manual_seed(0)
        enc = enc_mod.Encoder(vocab_size=32, n_hid=8, n_blk_per_group=1)
        dec = dec_mod.Decoder(vocab_size=32, n_init=8, n_hid=8, n_blk_per_group=1)
        files = {}
        for part, module in (('encoder', enc), ('decoder', dec)):
            files['zip', part] = root / f'{part}.pkl'
            torch.save(module, files['zip', part])
            # torch's legacy format, as OpenAI's files are (protocol 2, torch's default)
            files['legacy', part] = root / f'{part}_legacy.pkl'
            torch.save(module, files['legacy', part], _use_new_zipfile_serialization=False)
            # protocol 1: modules pickled through copyreg._reconstructor, not NEWOBJ
            files['legacy_p1', part] = root / f'{part}_legacy_p1.pkl'
            torch.save(module, files['legacy_p1', part], pickle_protocol=1,
                       _use_new_zipfile_serialization=False)
        x = torch.rand(2, 3, 16, 16)
        ids = torch.randint(0, 32, (2, 4))
        one_hot = F.one_hot(ids.view(2, 2, 2), 32).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            ref = dict(x=x, logits=enc(0.8 * x + 0.1), ids=ids, dec_out=dec(one_hot))
        state = dict(encoder={k: v.clone() for k, v in enc.state_dict().items()},
                     decoder={k: v.clone() for k, v in dec.state_dict().items()})
    finally:
        sys.path.remove(str(src))
        _drop_dall_e_modules()
    shutil.rmtree(src)
    return dict(files=files, state=state, ref=ref)


# --------------------------------------------------------------------------- OpenAI files


FORMATS = ['zip', 'legacy', 'legacy_p1']


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('part', ['encoder', 'decoder'])
def test_openai_pickle_loads_every_tensor(openai_files, part, fmt):
    sd = load_dalle_weights(str(openai_files['files'][fmt, part]), part)
    expected = openai_files['state'][part]
    assert isinstance(sd, OrderedDict)
    assert list(sd) == list(expected)
    for key, value in expected.items():
        assert type(sd[key]) is torch.Tensor and sd[key].is_contiguous()
        assert not sd[key].requires_grad
        assert torch.equal(sd[key], value), key
    assert 'dall_e' not in sys.modules  # nothing of OpenAI's package was imported


@pytest.mark.parametrize('fmt', FORMATS)
def test_openai_pickles_give_openai_outputs(openai_files, fmt):
    """Our modules loaded from the pickles reproduce the pickled modules' own forward."""
    files, ref = openai_files['files'], openai_files['ref']
    tok = DALLETokenizer(encoder=TINY_ENC, with_decoder=True, decoder=TINY_DEC,
                         encoder_checkpoint=str(files[fmt, 'encoder']),
                         decoder_checkpoint=str(files[fmt, 'decoder']), input_size=16)
    tok.init_weights()
    tok.freeze()
    torch.testing.assert_close(tok.logits(ref['x']), ref['logits'], rtol=0, atol=0)
    assert torch.equal(tok.tokenize(ref['x']), ref['logits'].argmax(1).flatten(1))
    rec = tok.decode(ref['ids'])
    expected = torch.clamp((torch.sigmoid(ref['dec_out'][:, :3]) - 0.1) / 0.8, 0, 1)
    torch.testing.assert_close(rec, expected, rtol=0, atol=0)


@pytest.mark.parametrize('fmt', FORMATS)
def test_decoder_file_as_encoder_is_named(openai_files, fmt):
    path = str(openai_files['files'][fmt, 'decoder'])
    with pytest.raises(DALLEWeightsError, match='dall_e.decoder.Decoder.*decoder file'):
        load_dalle_weights(path, 'encoder')


def test_allowlist_is_exactly_the_dall_e_classes():
    assert set(ALLOWED_PICKLE_GLOBALS) == {
        'dall_e.encoder.Encoder', 'dall_e.encoder.EncoderBlock', 'dall_e.decoder.Decoder',
        'dall_e.decoder.DecoderBlock', 'dall_e.utils.Conv2d',
        'torch.nn.modules.container.Sequential', 'torch.nn.modules.activation.ReLU',
        'torch.nn.modules.linear.Identity', 'torch.nn.modules.pooling.MaxPool2d',
        'torch.nn.modules.upsampling.Upsample'}
    # The allowlist only holds while a file is read.
    names = {g[1] for g in torch.serialization.get_safe_globals() if isinstance(g, tuple)}
    assert not names & set(ALLOWED_PICKLE_GLOBALS)


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
    with pytest.raises(UnsafePickleError) as info:
        load_dalle_weights(str(path), 'encoder')
    msg = str(info.value)
    assert str(path) in msg
    assert ('system' in msg) if payload is _SystemCall else ('eval' in msg)
    assert isinstance(info.value, UnsafeCheckpointError)
    assert not marker.exists()


def test_refusal_holds_under_torch_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker, path = tmp_path / 'pwned', tmp_path / 'encoder.pkl'
    torch.save(_SystemCall(marker), path)
    with pytest.raises(UnsafePickleError):
        load_dalle_weights(str(path), 'encoder')
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
    with pytest.raises(UnsafePickleError, match='dall_e.encoder.Encoder is only restored'):
        load_dalle_weights(str(path), 'encoder')


def test_other_module_class_refused(tmp_path):
    path = tmp_path / 'encoder.pkl'
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(UnsafePickleError, match='torch.nn.modules.linear.Linear'):
        load_dalle_weights(str(path), 'encoder')


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
        sd = load_dalle_weights(str(path), 'encoder')
        assert list(sd) == list(obj)
        for key, value in obj.items():
            assert sd[key].dtype == value.dtype and type(sd[key]) is torch.Tensor
            assert torch.equal(sd[key], value.detach()), key


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
    sd = load_dalle_weights(str(path), 'encoder')
    assert torch.equal(sd['t'], torch.tensor([[1., 3.], [2., 4.]]))
    assert torch.equal(sd['v'], torch.tensor([3., 4.]))  # view from 2, then offset 1
    assert torch.equal(sd['p'], torch.tensor([0., 2., 4.])) and not sd['p'].requires_grad


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
    with pytest.raises(UnsafePickleError) as info:
        load_dalle_weights(str(path), 'encoder')
    msg = str(info.value)
    assert str(path) in msg and named in msg and 'legacy format' in msg


def test_legacy_module_classes(tmp_path, openai_files):
    """A module class outside the allowlist, and a call of an allowed one, are refused."""
    path = tmp_path / 'encoder.pkl'
    torch.save(nn.Sequential(nn.Linear(2, 2)), path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError, match='GLOBAL torch.nn.modules.linear.Linear'):
        load_dalle_weights(str(path), 'encoder')
    _write_legacy(path, main=_pickle_calling('dall_e.encoder.Encoder'))
    with pytest.raises(UnsafePickleError, match='dall_e.encoder.Encoder is only restored'):
        load_dalle_weights(str(path), 'encoder')


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
    from mmbeit.models.tokenizers import dall_e as dall_e_module
    state = (b'N}(' + _unicode('pickled_as') + _unicode('x') + _unicode('length')
             + b'J\x00\x00\x00\x01u\x86')  # (None, {pickled_as: 'x', length: 2**24})
    path = tmp_path / 'encoder.pkl'
    _write_legacy(path, main=b'\x80\x02' + _BUILD_TARGETS[target] + state + b'b.',
                  storages=[('k0', 2, _float_bytes([1, 2]))])
    with pytest.raises((UnsafePickleError, DALLEWeightsError)) as info:
        load_dalle_weights(str(path), 'encoder')
    assert str(path) in str(info.value)
    stand_in = dall_e_module._STAND_INS['dall_e.encoder.Encoder']
    assert stand_in.pickled_as == 'dall_e.encoder.Encoder'


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
    with pytest.raises(DALLEWeightsError, match=named):
        load_dalle_weights(str(path), 'encoder')


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
    with pytest.raises(DALLEWeightsError, match='truncated') as info:
        load_dalle_weights(str(path), 'encoder')
    assert str(path) in str(info.value)


def test_tar_format_refused(tmp_path):
    path = tmp_path / 'encoder.pkl'
    member = tmp_path / 'pickle'
    member.write_bytes(pickle.dumps({'blocks.input.w': 1}))
    with tarfile.open(path, 'w:') as tar:
        tar.add(member, arcname='pickle')
    with pytest.raises(DALLEWeightsError, match='tar archive'):
        load_dalle_weights(str(path), 'encoder')


# --------------------------------------------------------------------------- mmpretrain


def _mmpretrain_encoder(**kwargs):
    from mmpretrain.models.selfsup.cae import DALLEEncoder as RefEncoder
    return RefEncoder(**kwargs).eval()


@pytest.mark.parametrize('n_blk', [1, 2])
def test_tokens_match_mmpretrain_tiny(n_blk):
    """Reference: mmpretrain's DALLEEncoder (same random weights, 4 groups, tiny widths)."""
    torch.manual_seed(n_blk)
    ref = _mmpretrain_encoder(n_hid=8, n_blk_per_group=n_blk, vocab_size=64)
    for p in ref.parameters():  # its biases start at 0; make them count
        p.data.add_(0.05 * torch.randn_like(p))
    tok = DALLETokenizer(encoder=dict(n_hid=8, n_blk_per_group=n_blk, vocab_size=64),
                         input_size=32)
    tok.encoder.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = ref(0.8 * x + 0.1)
    logits = tok.logits(x)
    assert logits.shape == (3, 64, 4, 4)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(tok.tokenize(x), expected.argmax(1).flatten(1))


@pytest.mark.parametrize('layout', ['bare', 'state_dict', 'module_prefix', 'encoder_prefix',
                                    'target_generator', 'model_with_others'])
def test_mmpretrain_layout_files_load(tmp_path, layout):
    ref = _mmpretrain_encoder(n_hid=8, n_blk_per_group=1, vocab_size=32)
    sd = ref.state_dict()
    if layout == 'bare':
        obj = sd
    elif layout == 'state_dict':
        obj = {'meta': {'epoch': 3}, 'state_dict': sd}
    elif layout == 'module_prefix':
        obj = {'state_dict': {f'module.{k}': v for k, v in sd.items()}}
    elif layout == 'encoder_prefix':
        obj = {f'encoder.{k}': v for k, v in sd.items()}
    elif layout == 'target_generator':
        obj = {'state_dict': {f'target_generator.{k}': v for k, v in sd.items()}}
    else:  # an mmpretrain BEiT checkpoint: backbone keys beside target_generator.*
        obj = {'state_dict': {'backbone.cls_token': torch.zeros(1, 1, 8),
                              **{f'target_generator.{k}': v for k, v in sd.items()}}}
    path = tmp_path / 'dalle_encoder.pth'
    torch.save(obj, path)
    loaded = load_dalle_weights(str(path), 'encoder')
    assert set(loaded) == set(sd)
    tok = MODELS.build(dict(type='DALLETokenizer', encoder=dict(TINY_ENC),
                            encoder_checkpoint=str(path), input_size=16))
    tok.init_weights()
    for key, value in sd.items():
        assert torch.equal(tok.encoder.state_dict()[key], value)


def test_full_size_matches_mmpretrain():
    """Reference: mmpretrain's DALL-E at OpenAI's size (random weights), batch 1, 112 px.

    Our state dict has exactly its keys and shapes; logits and token ids agree.
    """
    torch.manual_seed(0)
    ref = _mmpretrain_encoder()
    tok = DALLETokenizer().freeze()
    ref_sd = ref.state_dict()
    ours = tok.encoder.state_dict()
    assert list(ours) == list(ref_sd)
    assert all(ours[k].shape == ref_sd[k].shape for k in ours)
    tok.encoder.load_state_dict(ref_sd, strict=True)
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        expected = ref(0.8 * x + 0.1)
    logits = tok.logits(x)
    assert logits.shape == (1, 8192, 14, 14)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    ids = tok.tokenize(x)
    assert ids.shape == (1, 196) and ids.dtype == torch.long
    assert torch.equal(ids, expected.argmax(1).flatten(1))


# --------------------------------------------------------------------------- hand checks


def test_pixel_maps_by_hand():
    x = torch.tensor([0., 0.25, 0.5, 1.])
    torch.testing.assert_close(map_pixels(x), torch.tensor([0.1, 0.3, 0.5, 0.9]))
    y = torch.tensor([0., 0.1, 0.5, 0.9, 1.])
    torch.testing.assert_close(unmap_pixels(y), torch.tensor([0., 0., 0.5, 1., 1.]))
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)


def test_block_by_hand():
    with torch.device('meta'):
        enc = DALLEEncoder()  # OpenAI size: 4 groups x 2 blocks -> 1/64
    assert enc.blocks.group_1.block_1.post_gain == 1 / 64
    assert DALLEBlock(4, 4, n_layers=2).post_gain == 0.25
    same, wider = DALLEBlock(8, 8, 2), DALLEBlock(8, 16, 2, kind='decoder')
    assert isinstance(same.id_path, nn.Identity)
    assert isinstance(wider.id_path, DALLEConv) and wider.id_path.w.shape == (16, 8, 1, 1)
    kernels = [m.w.shape[-1] for m in same.res_path if isinstance(m, DALLEConv)]
    assert kernels == [3, 3, 3, 1]
    kernels = [m.w.shape[-1] for m in wider.res_path if isinstance(m, DALLEConv)]
    assert kernels == [1, 3, 3, 3]
    assert [m.w.shape[0] for m in wider.res_path if isinstance(m, DALLEConv)] == [4, 4, 4, 16]
    # forward = id_path(x) + res_path(x) / n_layers**2, spelled out
    x = torch.randn(2, 8, 5, 5)
    h = x
    for i in range(1, 5):
        conv = getattr(wider.res_path, f'conv_{i}')
        h = F.conv2d(F.relu(h), conv.w, conv.b, padding=conv.w.shape[-1] // 2)
    expected = F.conv2d(x, wider.id_path.w, wider.id_path.b) + 0.25 * h
    torch.testing.assert_close(wider(x), expected)
    torch.testing.assert_close(same(x), x + 0.25 * same.res_path(x))


def _expected_keys(widths, first_width):
    keys = ['blocks.input.w', 'blocks.input.b']
    for g, width in enumerate(widths, 1):
        for k in (1, 2):
            n_in = (first_width if g == 1 else widths[g - 2]) if k == 1 else width
            if n_in != width:
                keys += [f'blocks.group_{g}.block_{k}.id_path.{p}' for p in 'wb']
            keys += [f'blocks.group_{g}.block_{k}.res_path.conv_{c}.{p}'
                     for c in range(1, 5) for p in 'wb']
    return keys + ['blocks.output.conv.w', 'blocks.output.conv.b']


def test_full_size_layouts_by_hand():
    with torch.device('meta'):
        enc, dec = DALLEEncoder(), DALLEDecoder()
    esd, dsd = enc.state_dict(), dec.state_dict()
    assert list(esd) == _expected_keys([256, 512, 1024, 2048], 256)
    assert [k for k in esd if 'id_path' in k] == [
        f'blocks.group_{g}.block_1.id_path.{p}' for g in (2, 3, 4) for p in 'wb']
    assert esd['blocks.input.w'].shape == (256, 3, 7, 7)
    assert esd['blocks.group_1.block_1.res_path.conv_1.w'].shape == (64, 256, 3, 3)
    assert esd['blocks.group_4.block_1.id_path.w'].shape == (2048, 1024, 1, 1)
    assert esd['blocks.group_4.block_2.res_path.conv_4.w'].shape == (2048, 512, 1, 1)
    assert esd['blocks.output.conv.w'].shape == (8192, 2048, 1, 1)
    assert list(dsd) == _expected_keys([2048, 1024, 512, 256], 128)
    assert dsd['blocks.input.w'].shape == (128, 8192, 1, 1)
    assert dsd['blocks.group_1.block_1.id_path.w'].shape == (2048, 128, 1, 1)
    assert dsd['blocks.group_1.block_1.res_path.conv_1.w'].shape == (512, 128, 1, 1)
    assert dsd['blocks.group_4.block_1.res_path.conv_4.w'].shape == (256, 64, 3, 3)
    assert dsd['blocks.output.conv.w'].shape == (6, 256, 1, 1)
    assert isinstance(enc.blocks.group_3.pool, nn.MaxPool2d)
    assert not hasattr(enc.blocks.group_4, 'pool')
    assert isinstance(dec.blocks.group_3.upsample, nn.Upsample)
    assert not hasattr(dec.blocks.group_4, 'upsample')


def test_grid_and_token_shape_at_112():
    tok = DALLETokenizer(encoder=TINY_ENC)
    assert tok.input_size == 112 and tok.grid == (14, 14) and tok.vocab_size == 32
    ids = tok.tokenize(torch.rand(2, 3, 112, 112))
    assert ids.shape == (2, 196) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    assert tok.logits(torch.rand(1, 3, 112, 112)).shape == (1, 32, 14, 14)


def test_tokens_row_major():
    tok = DALLETokenizer(encoder=TINY_ENC, input_size=32)
    x = torch.rand(1, 3, 32, 32)
    logits = tok.logits(x)  # [1, 32, 4, 4]
    ids = tok.tokenize(x)
    assert ids[0, 1 * 4 + 2] == logits[0, :, 1, 2].argmax()
    assert ids[0, 3 * 4 + 0] == logits[0, :, 3, 0].argmax()


def test_autocast_does_not_change_tokens():
    tok = DALLETokenizer(encoder=TINY_ENC, input_size=32)
    x = torch.rand(2, 3, 32, 32)
    plain = tok.logits(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        inside = tok.logits(x.bfloat16())
        ids = tok.tokenize(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, tok.logits(x.bfloat16().float()))
    assert torch.equal(ids, plain.argmax(1).flatten(1))


def test_input_checks():
    tok = DALLETokenizer(encoder=TINY_ENC)
    with pytest.raises(ValueError, match=r'\[B, 3, 112, 112\].*got \(1, 3, 224, 224\)'):
        tok.tokenize(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match='112'):
        tok.tokenize(torch.rand(3, 112, 112))
    with pytest.raises(ValueError, match=r'in \[0, 1\].*got values'):
        tok.tokenize(torch.rand(1, 3, 112, 112) * 255)
    with pytest.raises(ValueError, match='float'):
        tok.tokenize(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))
    unchecked = DALLETokenizer(encoder=TINY_ENC, check_input_range=False)
    assert unchecked.tokenize(torch.rand(1, 3, 112, 112) * 2 - 1).shape == (1, 196)
    with pytest.raises(ValueError, match='multiple of 8'):
        DALLETokenizer(encoder=TINY_ENC, input_size=100)


def test_decode_needs_decoder():
    tok = DALLETokenizer(encoder=TINY_ENC)
    with pytest.raises(RuntimeError, match='with_decoder=True'):
        tok.decode(torch.zeros(1, 196, dtype=torch.long))
    with pytest.raises(ValueError, match='with_decoder'):
        DALLETokenizer(encoder=TINY_ENC, decoder_checkpoint='decoder.pkl')


def test_freeze_keeps_eval():
    tok = DALLETokenizer(encoder=TINY_ENC, with_decoder=True, decoder=TINY_DEC)
    tok.train()
    assert tok.training
    assert tok.freeze() is tok
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())
    assert tok.train() is tok
    assert not tok.training and not any(m.training for m in tok.modules())
    container = nn.ModuleDict(dict(target_generator=tok, head=nn.Linear(2, 2)))
    container.train()
    assert container.head.training and not tok.training


def test_decode_by_hand():
    torch.manual_seed(0)
    tok = DALLETokenizer(encoder=TINY_ENC, with_decoder=True, decoder=TINY_DEC,
                         input_size=32).freeze()
    for p in tok.decoder.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, 32, (2, 16))
    rec = tok.decode(ids)
    assert rec.shape == (2, 3, 32, 32)
    assert float(rec.min()) >= 0 and float(rec.max()) <= 1
    # The 1x1 input conv of a one-hot map picks the token's column of w (plus b).
    one_hot = F.one_hot(ids.view(2, 4, 4), 32).permute(0, 3, 1, 2).float()
    conv = tok.decoder.blocks.input
    picked = conv.w[:, :, 0, 0].t()[ids.view(2, 4, 4)].permute(0, 3, 1, 2) + conv.b.view(
        1, -1, 1, 1)
    torch.testing.assert_close(conv(one_hot), picked)
    with torch.no_grad():
        stats = tok.decoder(one_hot)
    torch.testing.assert_close(rec, ((torch.sigmoid(stats[:, :3]) - 0.1) / 0.8).clamp(0, 1))
    # N = 4 tokens: a 2x2 grid, not the 4x4 one of input_size 32.
    assert tok.decode(ids[:, :4]).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match='grid'):
        tok.decode(ids[:, :5])
    with pytest.raises(ValueError, match=r'\[0, 32\)'):
        tok.decode(torch.full((1, 16), 32))


def test_missing_and_unexpected_keys_named(tmp_path):
    sd = DALLEEncoder(**TINY_ENC).state_dict()
    del sd['blocks.output.conv.b']
    sd['blocks.group_9.block_1.res_path.conv_1.w'] = torch.zeros(1)
    path = tmp_path / 'enc.pth'
    torch.save(sd, path)
    tok = DALLETokenizer(encoder=TINY_ENC, encoder_checkpoint=str(path))
    before = {k: v.clone() for k, v in tok.encoder.state_dict().items()}
    with pytest.raises(DALLEWeightsError) as info:
        tok.init_weights()
    msg = str(info.value)
    assert str(path) in msg
    assert 'missing keys: blocks.output.conv.b' in msg
    assert 'unexpected keys: blocks.group_9.block_1.res_path.conv_1.w' in msg
    # nothing was copied
    assert all(torch.equal(v, before[k]) for k, v in tok.encoder.state_dict().items())


def test_shape_mismatch_named(tmp_path):
    path = tmp_path / 'enc.pth'
    torch.save(DALLEEncoder(n_hid=8, n_blk_per_group=1, vocab_size=64).state_dict(), path)
    with pytest.raises(DALLEWeightsError, match=r'blocks.output.conv.w \(64, 64, 1, 1\) '
                                                r'\(model \(32, 64, 1, 1\)\)'):
        load_dalle_weights(str(path), 'encoder', module=DALLEEncoder(**TINY_ENC))


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'enc.pth'
    torch.save({'blocks.input.w': torch.zeros(1), 'blocks.note': 'text'}, path)
    with pytest.raises(DALLEWeightsError, match='blocks.note'):
        load_dalle_weights(str(path), 'encoder')
    torch.save([torch.zeros(1)], path)
    with pytest.raises(DALLEWeightsError, match='list'):
        load_dalle_weights(str(path), 'encoder')
    with pytest.raises(FileNotFoundError, match='nope.pkl'):
        load_dalle_weights(str(tmp_path / 'nope.pkl'), 'encoder')
    with pytest.raises(ValueError, match='part'):
        load_dalle_weights(str(path), 'quantizer')
