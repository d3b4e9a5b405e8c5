"""DALL-E dVAE tokenizer: the target generator of BEiT v1 (BEiT paper section 2.2).

What it is. OpenAI's discrete VAE from DALL-E. Its encoder turns an image into a grid of
logits over a visual vocabulary of 8192 codes; the argmax at every position is the token
BEiT v1 learns to predict for the matching patch. A 112 x 112 image (the second view,
the same crop as the 224 view, resized) gives a 14 x 14 grid, one token per 16 x 16
patch of the 224 view. The decoder maps tokens back to pixels; BEiT only needs it to look
at what tokens mean (:meth:`DALLETokenizer.decode`).

* :class:`DALLEEncoder`: conv 7x7 (``input``), four groups of residual blocks
  (``group_1`` .. ``group_4``, widths 1, 2, 4, 8 x ``n_hid``, a 2x2 max-pool after every
  group but the last), ReLU + conv 1x1 to ``vocab_size`` logits (``output``).
* :class:`DALLEDecoder`: conv 1x1 from the one-hot tokens (``input``), four groups
  (widths 8, 4, 2, 1 x ``n_hid``, a nearest 2x upsample after every group but the last),
  ReLU + conv 1x1 to ``2 * output_channels`` (``output``); the first three channels,
  through a sigmoid and the inverse pixel map, are the image.
* Every block is ``id_path(x) + res_path(x) / n_layers**2`` with ``n_layers`` = groups x
  blocks per group (8, so 1/64); ``id_path`` is a 1x1 conv when the width changes.
* :class:`DALLETokenizer` (registered in ``mmbeit.registry.MODELS``) wraps them with the
  interface BEiT's target generators share: ``tokenize``, ``vocab_size``, ``input_size``,
  ``grid``, ``freeze``.

Input. RGB in [0, 1], [B, 3, 112, 112] (the data pipeline divides by 255 and does not
normalise this view). The tokenizer applies the logit-Laplace map itself:
``x -> (1 - 2 * eps) * x + eps = 0.8 * x + 0.1`` (eps = 0.1), so the encoder sees
[0.1, 0.9]. The decoder's output goes the other way: ``clamp((y - 0.1) / 0.8, 0, 1)``.

Precision. The encoder always runs in fp32 here, autocast switched off around all of it.
OpenAI's code (and mmpretrain's copy) runs every conv but the last in fp16 on CUDA, so on
a GPU a token whose top two logits nearly tie can come out differently; in fp32 the
result does not depend on the device or on AMP.

Weights (the state-dict layout is OpenAI's module layout, no conversion needed):

* OpenAI's files, https://cdn.openai.com/dall-e/encoder.pkl and
  https://cdn.openai.com/dall-e/decoder.pkl (the files unilm's BEiT instructions
  download). They are whole pickled ``dall_e`` modules, not state dicts.
* mmpretrain's converted encoder,
  https://download.openmmlab.com/mmselfsup/1.x/target_generator_ckpt/dalle_encoder.pth,
  a state dict with the same keys (``blocks.input.w``, ...). A state dict may also sit
  under ``'state_dict'`` and carry a prefix (``module.``, ``encoder.`` / ``decoder.``,
  ``target_generator.``); the keys under the prefix are taken, the rest of the file is
  ignored.

Pass them as ``encoder_checkpoint`` / ``decoder_checkpoint``; ``init_weights()`` loads them
through :func:`load_dalle_weights`, strictly: a missing, unexpected or wrongly shaped key
raises :class:`DALLEWeightsError` naming the file and the keys.

Formats. :func:`load_dalle_weights` looks at the file first:

* torch's legacy format (torch < 1.6, or ``_use_new_zipfile_serialization=False``),
  recognised by the pickled magic number it starts with. OpenAI's ``encoder.pkl`` /
  ``decoder.pkl`` are in this format (loading them with plain ``torch.load`` goes through
  torch's ``_legacy_load``, microsoft/unilm#756).
* torch's zip format (torch >= 1.6), recognised as a zip archive.
* A tar archive (the format of the earliest torch releases) is refused as unsupported;
  anything else goes to torch's weights-only loader, which refuses whatever global
  outside its defaults and the allowlist a bare pickle names.

Safety. Unpickling a whole module normally imports the ``dall_e`` package and lets the file
call any function it names. Neither path below imports ``dall_e`` (or anything else) or
calls a function the file names unless it is on an explicit allowlist and is our own
replacement for it. The names a module file needs are :data:`ALLOWED_PICKLE_GLOBALS`
(``dall_e.encoder.Encoder`` / ``EncoderBlock``, ``dall_e.decoder.Decoder`` /
``DecoderBlock``, ``dall_e.utils.Conv2d`` and torch's ``Sequential``, ``ReLU``,
``Identity``, ``MaxPool2d``, ``Upsample``); each maps to a stand-in class defined below.
A stand-in runs no code from the file: it can only be created empty (pickle's NEWOBJ, or
``copyreg._reconstructor`` in protocol 1) and receive a dict of attributes (BUILD);
calling it is refused, it is not an ``nn.Module`` and nothing of it is ever called
afterwards. The tensors are then read out of its ``_parameters`` / ``_buffers`` /
``_modules``. Whatever is refused is reported as :class:`UnsafePickleError`, with the file
and what was refused (``module.name`` of a global, or the record).

* Zip format: ``torch.load(path, map_location='cpu', weights_only=True)``, torch's own
  restricted unpickler, with the stand-ins registered under the allowed names for the
  duration of the call (``torch.serialization.safe_globals`` with
  ``(stand_in, 'module.qualname')`` pairs). Everything else a file names is refused by
  torch (its defaults admit tensors, storages, ``Parameter``, ``OrderedDict``,
  ``torch.device``, ``set`` and the like). While a file is read, the mapping is
  process-wide (torch keeps one allowlist), so another thread loading at the same moment
  would see the same inert stand-ins for those names.
* Legacy format: torch's weights-only unpickler cannot read it (module classes are stored
  as ``('module', cls, source_file, source)`` persistent ids), so it is read by our own
  ``pickle.Unpickler`` subclass. Its ``find_class`` admits the stand-in names plus
  :data:`LEGACY_PICKLE_GLOBALS` (and their Python 2 spellings, and
  ``torch.cuda.<T>Storage``), each mapped to a safe object: ``OrderedDict`` / ``set`` /
  ``object`` themselves, dtype markers for the storage names, and our own small
  functions in place of ``_rebuild_tensor_v2`` / ``_rebuild_parameter`` /
  ``torch.device`` / ``copyreg._reconstructor`` that check their arguments and only
  build a strided view of a storage, a Parameter, a device or an empty stand-in
  (backward hooks must be empty). Those functions and markers refuse BUILD, so a file
  cannot alter them. Its ``persistent_load`` accepts only
  torch's ``('module', ...)`` records for a stand-in class and ``('storage', ...)``
  records, whose storages are allocated (in total at most the file's size) and then
  filled with the raw bytes after the pickle; every tensor view is checked to lie inside
  its storage, and a file that ends early is reported as truncated
  (:class:`DALLEWeightsError`). Nothing process-wide is changed.
"""
import io
import os.path as osp
import pickle
import re
import sys
import tarfile
import zipfile
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmbeit.engine.checkpoint import UnsafeCheckpointError
from mmbeit.registry import MODELS

__all__ = [
    'DALLEConv', 'DALLEBlock', 'DALLEEncoder', 'DALLEDecoder', 'DALLETokenizer',
    'DALLEWeightsError', 'UnsafePickleError', 'load_dalle_weights', 'map_pixels',
    'unmap_pixels', 'LOGIT_LAPLACE_EPS', 'ALLOWED_PICKLE_GLOBALS', 'LEGACY_PICKLE_GLOBALS'
]

LOGIT_LAPLACE_EPS = 0.1
_MAX_KEYS_SHOWN = 20


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    """Logit-Laplace input map of the dVAE: [0, 1] -> [eps, 1 - eps] (0.8 x + 0.1)."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`map_pixels`, clamped to [0, 1]."""
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


# --------------------------------------------------------------------------- modules


class DALLEConv(nn.Module):
    """Conv with OpenAI's parameter names ``w`` [n_out, n_in, k, k] and ``b`` [n_out].

    Stride 1, padding (k - 1) // 2 (k odd). Initialised like OpenAI's: w ~ N(0, 1/fan_in),
    b = 0.
    """

    def __init__(self, n_in: int, n_out: int, kernel_size: int):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd and >= 1, got {kernel_size}')
        self.kernel_size = kernel_size
        fan_in = n_in * kernel_size ** 2
        self.w = nn.Parameter(torch.randn(n_out, n_in, kernel_size, kernel_size) / fan_in**0.5)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=(self.kernel_size - 1) // 2)

    def extra_repr(self) -> str:
        n_out, n_in = self.w.shape[:2]
        return f'{n_in}, {n_out}, kernel_size={self.kernel_size}'


# Kernel sizes of res_path conv_1 .. conv_4.
_RES_KERNELS = {'encoder': (3, 3, 3, 1), 'decoder': (1, 3, 3, 3)}


class DALLEBlock(nn.Module):
    """Residual block: ``id_path(x) + post_gain * res_path(x)``, post_gain = 1/n_layers**2.

    ``res_path`` = ReLU, conv_1, ReLU, conv_2, ReLU, conv_3, ReLU, conv_4 with widths
    n_in -> n_out/4 -> n_out/4 -> n_out/4 -> n_out and kernels 3, 3, 3, 1 (encoder) or
    1, 3, 3, 3 (decoder). ``id_path`` is a 1x1 conv when n_in != n_out, else identity.
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int, kind: str = 'encoder'):
        super().__init__()
        if kind not in _RES_KERNELS:
            raise ValueError(f"kind must be 'encoder' or 'decoder', got {kind!r}")
        if n_out % 4 != 0:
            raise ValueError(f'n_out must be a multiple of 4, got {n_out}')
        n_hid = n_out // 4
        self.post_gain = 1 / (n_layers ** 2)
        self.id_path = DALLEConv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, n_hid, n_hid, n_hid, n_out)
        layers = []
        for i, k in enumerate(_RES_KERNELS[kind]):
            layers.append((f'relu_{i + 1}', nn.ReLU()))
            layers.append((f'conv_{i + 1}', DALLEConv(widths[i], widths[i + 1], k)))
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _group(blocks, last_name: str, last: Optional[nn.Module]) -> nn.Sequential:
    items = [(f'block_{i + 1}', blk) for i, blk in enumerate(blocks)]
    if last is not None:
        items.append((last_name, last))
    return nn.Sequential(OrderedDict(items))


class DALLEEncoder(nn.Module):
    """DALL-E dVAE encoder; ``forward`` maps (already pixel-mapped) images to logits.

    Args:
        n_hid (int): width of the first group; group g is ``2**(g-1) * n_hid`` wide.
            Defaults to 256.
        n_blk_per_group (int): blocks per group. Defaults to 2.
        group_count (int): number of groups; OpenAI's model has 4 (a 2x2 max-pool after
            every group but the last, so the grid is input / 2**(group_count-1)).
        input_channels (int): Defaults to 3.
        vocab_size (int): number of codes = output channels. Defaults to 8192.
    """

    def __init__(self, n_hid: int = 256, n_blk_per_group: int = 2, group_count: int = 4,
                 input_channels: int = 3, vocab_size: int = 8192):
        super().__init__()
        self.n_hid, self.n_blk_per_group, self.group_count = n_hid, n_blk_per_group, group_count
        self.input_channels, self.vocab_size = input_channels, vocab_size
        n_layers = group_count * n_blk_per_group
        items = [('input', DALLEConv(input_channels, n_hid, 7))]
        n_in = n_hid
        for g in range(group_count):
            n_out = 2**g * n_hid
            blocks = [DALLEBlock(n_in if i == 0 else n_out, n_out, n_layers, 'encoder')
                      for i in range(n_blk_per_group)]
            pool = nn.MaxPool2d(kernel_size=2) if g < group_count - 1 else None
            items.append((f'group_{g + 1}', _group(blocks, 'pool', pool)))
            n_in = n_out
        items.append(('output', nn.Sequential(OrderedDict([
            ('relu', nn.ReLU()), ('conv', DALLEConv(n_in, vocab_size, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(items))

    @property
    def downsample(self) -> int:
        return 2**(self.group_count - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, input_channels, H, W] in [0.1, 0.9] -> logits [B, vocab_size, H/8, W/8]."""
        return self.blocks(x)


class DALLEDecoder(nn.Module):
    """DALL-E dVAE decoder; ``forward`` maps one-hot tokens to pixel statistics.

    Args:
        n_init (int): width of the input conv. Defaults to 128.
        n_hid (int): group g (1-based) is ``2**(group_count-g) * n_hid`` wide.
            Defaults to 256.
        n_blk_per_group (int): Defaults to 2.
        group_count (int): Defaults to 4 (a nearest 2x upsample after every group but
            the last).
        output_channels (int): image channels; the output has twice as many (the first
            ``output_channels`` are the image logits). Defaults to 3.
        vocab_size (int): Defaults to 8192.
    """

    def __init__(self, n_init: int = 128, n_hid: int = 256, n_blk_per_group: int = 2,
                 group_count: int = 4, output_channels: int = 3, vocab_size: int = 8192):
        super().__init__()
        self.n_init, self.n_hid, self.n_blk_per_group = n_init, n_hid, n_blk_per_group
        self.group_count, self.output_channels = group_count, output_channels
        self.vocab_size = vocab_size
        n_layers = group_count * n_blk_per_group
        items = [('input', DALLEConv(vocab_size, n_init, 1))]
        n_in = n_init
        for g in range(group_count):
            n_out = 2**(group_count - 1 - g) * n_hid
            blocks = [DALLEBlock(n_in if i == 0 else n_out, n_out, n_layers, 'decoder')
                      for i in range(n_blk_per_group)]
            up = (nn.Upsample(scale_factor=2, mode='nearest')
                  if g < group_count - 1 else None)
            items.append((f'group_{g + 1}', _group(blocks, 'upsample', up)))
            n_in = n_out
        items.append(('output', nn.Sequential(OrderedDict([
            ('relu', nn.ReLU()), ('conv', DALLEConv(n_in, 2 * output_channels, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(items))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot [B, vocab_size, h, w] float -> [B, 2 * output_channels, 8h, 8w]."""
        return self.blocks(x)


# --------------------------------------------------------------------------- loading


class DALLEWeightsError(RuntimeError):
    """A DALL-E weight file cannot be read as, or does not match, the dVAE exactly."""


class UnsafePickleError(UnsafeCheckpointError):
    """A DALL-E weight file names a Python global outside the allowlist (nothing was run).

    A subclass of mmbeit's ``UnsafeCheckpointError`` (itself a ``pickle.UnpicklingError``),
    so code that catches refused checkpoints in general catches this too.
    """


class _Refused(pickle.UnpicklingError):
    """Internal: the file asks for a global, call or record outside the allowlist."""


class _Malformed(Exception):
    """Internal: a legacy-format file whose structure is not what torch writes."""


class _PickledModule:
    """State of one module from an OpenAI pickle: a bag of attributes, nothing more.

    Both unpicklers create it with ``cls.__new__(cls)`` (pickle's NEWOBJ; in a protocol-1
    legacy file, ``copyreg._reconstructor(cls, object, None)``) and fill it through
    ``__setstate__`` (BUILD). Calling the class (pickle's REDUCE), creating it with
    arguments, or filling it with anything but a dict of str keys is an error. It has no
    other behaviour.
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


def _stand_in(full_name: str) -> type:
    name = 'Pickled_' + full_name.replace('.', '_')
    return type(name, (_PickledModule,), {'pickled_as': full_name, '__module__': __name__})


#: The exact globals an OpenAI pickle may name besides torch's weights-only defaults
#: (tensors, storages, Parameter, OrderedDict, torch.device, set, ...). Both parts' names
#: are admitted for either file, so that a decoder file passed as the encoder is reported
#: as such rather than as unsafe; every one of them maps to an inert stand-in.
ALLOWED_PICKLE_GLOBALS: Tuple[str, ...] = (
    'dall_e.encoder.Encoder', 'dall_e.encoder.EncoderBlock',
    'dall_e.decoder.Decoder', 'dall_e.decoder.DecoderBlock',
    'dall_e.utils.Conv2d',
    'torch.nn.modules.container.Sequential', 'torch.nn.modules.activation.ReLU',
    'torch.nn.modules.linear.Identity', 'torch.nn.modules.pooling.MaxPool2d',
    'torch.nn.modules.upsampling.Upsample',
)
_STAND_INS = {name: _stand_in(name) for name in ALLOWED_PICKLE_GLOBALS}
_ROOT_CLASS = {'encoder': 'dall_e.encoder.Encoder', 'decoder': 'dall_e.decoder.Decoder'}


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


def _globals_outside_allowlist(path: str) -> str:
    """Every global a zip checkpoint names that neither torch nor we allow (an opcode scan,
    nothing is loaded)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a scan is a courtesy for the message; the refusal stands anyway
        return ''
    return ', '.join(sorted(set(found) - set(ALLOWED_PICKLE_GLOBALS)))


def _unsafe_error(path: str, part: str, detail: str, legacy: bool,
                  note: str = '') -> UnsafePickleError:
    if legacy:
        fmt = 'the file (torch\'s legacy format, torch < 1.6)'
        allowed = (f'Allowed, as inert stand-ins that are only filled with stored state: '
                   f'{", ".join(ALLOWED_PICKLE_GLOBALS)}; and, each mapped to a checked '
                   f'rebuild function, a dtype marker or a plain container: '
                   f'{", ".join(LEGACY_PICKLE_GLOBALS)} (and torch.cuda.<T>Storage).')
    else:
        fmt = 'the file'
        allowed = (f'Allowed besides tensors and containers, as inert stand-ins that are '
                   f'only filled with stored state: {", ".join(ALLOWED_PICKLE_GLOBALS)}.')
    return UnsafePickleError(
        f'Refusing to load DALL-E {part} weights from {path!r}: {fmt} needs Python '
        f'objects or calls outside the allowlist, and unpickling them could run code '
        f'(nothing from it was run). {allowed} What was refused: {detail}.'
        f'{note} If the file comes from a source you trust, re-save only its '
        f'tensors in a separate Python (torch.save(module.state_dict(), NEW_PATH)); '
        f'if it does not, do not use it.')


def _torch_load_restricted(path: str, part: str):
    pairs = [(_STAND_INS[name], name) for name in ALLOWED_PICKLE_GLOBALS]
    try:
        with torch.serialization.safe_globals(pairs):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _refused_detail(exc)
        note = ''
        if zipfile.is_zipfile(path):
            others = _globals_outside_allowlist(path)
            if others:
                detail += f' (all globals it names outside the allowlist: {others})'
        else:
            note = (' The file is in neither of torch\'s formats (zip, or the legacy format '
                    'of torch < 1.6): it is a bare pickle or not a torch file.')
        raise _unsafe_error(path, part, detail, legacy=False, note=note) from exc


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

#: What a legacy-format file may name besides :data:`ALLOWED_PICKLE_GLOBALS` (and
#: ``torch.cuda.<T>Storage`` for every ``torch.<T>Storage`` here). Each maps to an object
#: of this module, never to the named one (see :class:`_LegacyUnpickler`).
LEGACY_PICKLE_GLOBALS: Tuple[str, ...] = (
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

    ``find_class`` maps each name of :data:`ALLOWED_PICKLE_GLOBALS` to its inert stand-in
    and each of :data:`LEGACY_PICKLE_GLOBALS` to a container type (``OrderedDict``,
    ``set``, ``object``), a dtype marker (storage types) or a method below (wrapped in a
    :class:`_SafeCall`) that checks its arguments and only builds a tensor view, a
    Parameter, a ``torch.device`` or an empty stand-in; everything else is refused. What
    a file can reach of ours refuses BUILD (:class:`_NoBuild`). ``persistent_load``
    accepts only torch's two record forms. Storages are allocated when first named (their
    total may not exceed the file's size) and filled from the file by
    :meth:`fill_storages` after the pickle, so the tensors built meanwhile are views of
    memory that is filled in place.
    """

    def __init__(self, file, byte_budget: int):
        super().__init__(file)
        self._budget = byte_budget
        self._roots: Dict[str, _LegacyRoot] = {}
        self._views: Dict[str, _LegacyStorage] = {}
        table = dict(_STAND_INS)
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

    def persistent_load(self, pid):
        ok = isinstance(pid, tuple) and bool(pid) and isinstance(pid[0], str)
        kind = pid[0] if ok else None
        if kind == 'module' and len(pid) == 4:
            cls = pid[1]
            if not (isinstance(cls, type) and issubclass(cls, _PickledModule)):
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

    @staticmethod
    def _reconstructor(cls, base, state):
        """``copyreg._reconstructor`` (protocols 0/1) for the stand-ins only."""
        if not (isinstance(cls, type) and issubclass(cls, _PickledModule)
                and base is object and state is None):
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


def _is_legacy_torch_file(path: str) -> bool:
    """True when the file starts with the pickled magic number of torch's legacy format."""
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


def _legacy_load_restricted(path: str, part: str):
    """Read a legacy-format file through :class:`_LegacyUnpickler` (nothing else runs)."""
    if sys.byteorder != 'little':
        raise DALLEWeightsError(f'{path!r}: reading torch\'s legacy format (little-endian '
                                f'data) is only supported on little-endian machines')
    try:
        with open(path, 'rb') as f:
            magic, version, sys_info = (_DataOnlyUnpickler(f).load() for _ in range(3))
            if magic != _LEGACY_MAGIC_NUMBER or version != _LEGACY_PROTOCOL_VERSION:
                raise _Malformed(f'unexpected header (magic {_short(magic)}, protocol '
                                 f'version {_short(version)})')
            if not isinstance(sys_info, dict):
                raise _Malformed(f'the sys_info header is a {_short(sys_info)}')
            unpickler = _LegacyUnpickler(f, osp.getsize(path))
            obj = unpickler.load()
            unpickler.fill_storages(f, _DataOnlyUnpickler(f).load())
    except _Refused as exc:
        raise _unsafe_error(path, part, str(exc), legacy=True) from exc
    except _Malformed as exc:
        raise DALLEWeightsError(
            f'{path!r} cannot be read as a file in torch\'s legacy format (torch < 1.6): '
            f'{exc}') from exc
    except Exception as exc:  # the pickle machinery's own errors: EOF, bad opcodes, ...
        raise DALLEWeightsError(
            f'{path!r} cannot be read as a file in torch\'s legacy format (torch < 1.6); '
            f'it is truncated or corrupt, or not as torch writes it ({type(exc).__name__}: '
            f'{exc})') from exc
    return obj


def _read_weight_file(path: str, part: str):
    """Dispatch on the format: legacy torch, zip torch, refused tar, anything else."""
    if _is_legacy_torch_file(path):
        return _legacy_load_restricted(path, part)
    if not zipfile.is_zipfile(path) and _is_plain_tar(path):
        raise DALLEWeightsError(
            f'{path!r} is a tar archive, the format of the earliest torch releases, which '
            f'is not supported; re-save its tensors as a state dict in a Python you trust')
    return _torch_load_restricted(path, part)


def _state_of_pickled(root: _PickledModule, path: str) -> 'OrderedDict[str, torch.Tensor]':
    """Walk ``_parameters`` / ``_buffers`` / ``_modules`` into a plain state dict."""
    out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()

    def bad(where: str, what: str):
        return DALLEWeightsError(f'{path!r}: {where or "<root>"} {what}; not a DALL-E module '
                                 f'as OpenAI pickled it')

    def walk(obj: _PickledModule, prefix: str, depth: int):
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
            if not isinstance(child, _PickledModule):
                raise bad(prefix + name, f'is a {type(child).__name__}, not a module')
            walk(child, f'{prefix}{name}.', depth + 1)

    walk(root, '', 0)
    return out


def _select_prefix(sd: Dict[str, torch.Tensor], part: str) -> Dict[str, torch.Tensor]:
    """Take the keys under the prefix that holds ``blocks.*`` (see the module docstring)."""
    if any(k.startswith('blocks.') for k in sd):
        return sd
    firsts = [f'{part}.'] + (['target_generator.'] if part == 'encoder' else [])
    candidates = firsts + [f'target_generator.{part}.']
    candidates += [f'module.{c}' for c in candidates] + ['module.']
    for prefix in candidates:
        if any(k.startswith(prefix + 'blocks.') for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _show_keys(keys) -> str:
    keys = sorted(keys)
    more = len(keys) - _MAX_KEYS_SHOWN
    return ', '.join(keys[:_MAX_KEYS_SHOWN]) + (f', ... and {more} more' if more > 0 else '')


def _check_and_load(module: nn.Module, sd: Dict[str, torch.Tensor], path: str,
                    part: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k} {tuple(sd[k].shape)} (model {tuple(own[k].shape)})'
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f'missing keys: {_show_keys(missing)}')
    if unexpected:
        problems.append(f'unexpected keys: {_show_keys(unexpected)}')
    if shapes:
        problems.append(f'shape mismatches: {_show_keys(shapes)}')
    if problems:
        raise DALLEWeightsError(
            f'DALL-E {part} weights in {path!r} do not match the {part} built here '
            f'(check its sizes: n_hid, n_blk_per_group, vocab_size, ...). '
            + '; '.join(problems))
    module.load_state_dict(sd, strict=True)


def load_dalle_weights(path: str, part: str = 'encoder',
                       module: Optional[nn.Module] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Read DALL-E dVAE weights into a plain state dict (``blocks.*`` keys).

    Accepts OpenAI's pickled ``encoder.pkl`` / ``decoder.pkl`` (read through the
    allowlist of the module docstring, without importing ``dall_e``), in torch's legacy
    format as OpenAI's files are or in its zip format, and state dicts in
    our / OpenAI's / mmpretrain's layout, bare or under ``'state_dict'``, with or without a
    prefix (``module.``, ``encoder.`` / ``decoder.``, ``target_generator.``).

    Args:
        path (str): local file.
        part (str): ``'encoder'`` or ``'decoder'``.
        module (nn.Module, optional): if given (a :class:`DALLEEncoder` /
            :class:`DALLEDecoder`), the weights are checked against it, keys and shapes,
            and copied into it; any difference raises :class:`DALLEWeightsError` naming
            the file and the keys.

    Returns:
        OrderedDict[str, Tensor]: detached, contiguous CPU tensors.

    Raises:
        UnsafePickleError: the file names a global (or, in the legacy format, a record)
            outside the allowlist.
        DALLEWeightsError: the file holds something else than DALL-E weights, is
            truncated or corrupt, or (with ``module``) does not match it.
    """
    if part not in _ROOT_CLASS:
        raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'DALL-E {part} weights {path!r} do not exist')
    obj = _read_weight_file(path, part)
    if isinstance(obj, _PickledModule):
        if obj.pickled_as != _ROOT_CLASS[part]:
            raise DALLEWeightsError(
                f'{path!r} holds a pickled {obj.pickled_as}, not a {_ROOT_CLASS[part]} '
                f'(is it the {"decoder" if part == "encoder" else "encoder"} file?)')
        sd = _state_of_pickled(obj, path)
    elif isinstance(obj, dict):
        inner = obj.get('state_dict', obj)
        if not isinstance(inner, dict):
            raise DALLEWeightsError(f"{path!r}: 'state_dict' is a {type(inner).__name__}")
        sd = _select_prefix(inner, part)
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise DALLEWeightsError(
                f'{path!r} is not a DALL-E {part} state dict; entries that are not '
                f'tensors: {_show_keys(map(str, bad))}')
        sd = OrderedDict((k, v.detach().contiguous()) for k, v in sd.items())
    else:
        raise DALLEWeightsError(
            f'{path!r} holds a {type(obj).__name__}, neither a pickled DALL-E module nor '
            f'a state dict')
    if module is not None:
        _check_and_load(module, sd, path, part)
    return sd


# --------------------------------------------------------------------------- tokenizer


@MODELS.register_module()
class DALLETokenizer(BaseModule):
    """BEiT v1 target generator: DALL-E dVAE encoder (+ optional decoder).

    Args:
        encoder (dict, optional): :class:`DALLEEncoder` arguments (sizes); defaults to
            OpenAI's model.
        with_decoder (bool): also build the decoder (only needed for :meth:`decode`).
        decoder (dict, optional): :class:`DALLEDecoder` arguments; its ``vocab_size`` is
            the encoder's.
        encoder_checkpoint (str, optional): loaded by :meth:`init_weights` through
            :func:`load_dalle_weights`.
        decoder_checkpoint (str, optional): likewise; needs ``with_decoder=True``.
        input_size (int): side of the square input, 112 for BEiT v1.
        check_input_range (bool): raise when an input batch leaves [0, 1] (catches
            0-255 or mean/std-normalised input, which would silently give wrong tokens).
            CPU tensors are checked on every call (reading a CPU result waits for no
            device). On an accelerator the first ``RANGE_CHECKS_READ`` calls read the
            range back (one sync each) and raise the ValueError that names it; later
            calls check with ``torch._assert_async``, which stops a run on a bad batch
            without a host sync per step.
        init_cfg (dict | list, optional): mmengine init config.
    """

    # Calls on an accelerator whose input range is read back before the async checks,
    # and the devices where reading it back waits for nothing (always read there).
    RANGE_CHECKS_READ = 2
    RANGE_READ_DEVICES = ('cpu', )

    def __init__(self, encoder: Optional[dict] = None, with_decoder: bool = False,
                 decoder: Optional[dict] = None, encoder_checkpoint: Optional[str] = None,
                 decoder_checkpoint: Optional[str] = None, input_size: int = 112,
                 check_input_range: bool = True,
                 init_cfg: Union[dict, list, None] = None):
        super().__init__(init_cfg=init_cfg)
        self.encoder = DALLEEncoder(**(encoder or {}))
        if decoder is not None and not with_decoder:
            raise ValueError('decoder sizes were given but with_decoder=False')
        if decoder_checkpoint is not None and not with_decoder:
            raise ValueError('decoder_checkpoint needs with_decoder=True')
        self.decoder = None
        if with_decoder:
            dec_cfg = dict(decoder or {})
            vocab = dec_cfg.setdefault('vocab_size', self.encoder.vocab_size)
            if vocab != self.encoder.vocab_size:
                raise ValueError(f'decoder vocab_size {vocab} != encoder vocab_size '
                                 f'{self.encoder.vocab_size}')
            self.decoder = DALLEDecoder(**dec_cfg)
        down = self.encoder.downsample
        if input_size % down != 0:
            raise ValueError(f'input_size {input_size} is not a multiple of {down}')
        self.input_size = int(input_size)
        self.encoder_checkpoint = encoder_checkpoint
        self.decoder_checkpoint = decoder_checkpoint
        self.check_input_range = check_input_range
        self._range_reads_left = self.RANGE_CHECKS_READ
        self._frozen = False

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    @property
    def grid(self) -> Tuple[int, int]:
        side = self.input_size // self.encoder.downsample
        return (side, side)

    def init_weights(self) -> None:
        """mmengine init, then the DALL-E checkpoints (strict)."""
        super().init_weights()
        if self.encoder_checkpoint is not None:
            load_dalle_weights(self.encoder_checkpoint, 'encoder', module=self.encoder)
        if self.decoder_checkpoint is not None:
            load_dalle_weights(self.decoder_checkpoint, 'decoder', module=self.decoder)

    def freeze(self) -> 'DALLETokenizer':
        """Target-generator mode: eval, no grad, and ``train()`` keeps it in eval."""
        self._frozen = True
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> 'DALLETokenizer':
        return super().train(False if self._frozen else mode)

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.input_size
        if (not isinstance(images, torch.Tensor) or images.dim() != 4
                or images.shape[1] != self.encoder.input_channels
                or images.shape[2] != size or images.shape[3] != size):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(
                f'DALL-E tokenizer expects RGB images [B, {self.encoder.input_channels}, '
                f'{size}, {size}] in [0, 1] (input_size={size}), got {got}')
        if not images.is_floating_point():
            raise ValueError(f'DALL-E tokenizer expects float images in [0, 1], got '
                             f'{images.dtype}')
        if self.check_input_range and images.numel():
            self._check_range(images.detach())

    def _check_range(self, images: torch.Tensor) -> None:
        lo, hi = torch.aminmax(images)
        message = ('DALL-E tokenizer expects images in [0, 1] (it applies the 0.8 x + 0.1 '
                   'map itself); got values in [{lo:.3g}, {hi:.3g}]')
        free = images.device.type in self.RANGE_READ_DEVICES
        if not free and self._range_reads_left <= 0:
            ok = (lo >= -1e-3) & (hi <= 1 + 1e-3)
            torch._assert_async(ok, 'DALL-E tokenizer: an input batch left [0, 1] (it '
                                'applies the 0.8 x + 0.1 map itself; give it [0, 1] images)')
            return
        if not free:
            self._range_reads_left -= 1
        lo, hi = lo.item(), hi.item()
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(message.format(lo=lo, hi=hi))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder logits [B, vocab_size, h, w] (fp32, autocast off) for [0, 1] images.

        Runs in the caller's grad mode; :meth:`tokenize` is the no-grad path.
        """
        self._check_images(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            weight = self.encoder.blocks.input.w
            return self.encoder(map_pixels(images.to(weight.dtype)))

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids [B, h*w] (long, row-major) for RGB images [B, 3, S, S] in [0, 1].

        S = ``input_size``; any other size raises ValueError. Applies the logit-Laplace
        map itself and computes the whole encoder in fp32 with autocast disabled.
        """
        return self.logits(images).argmax(dim=1).flatten(1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, 8h, 8w] in [0, 1] from token ids [B, h*w] (needs the decoder).

        The grid is :attr:`grid` when N matches it, else sqrt(N) for a square N.
        """
        if self.decoder is None:
            raise RuntimeError('DALLETokenizer.decode needs the decoder: build it with '
                               'with_decoder=True (and decoder_checkpoint=decoder.pkl)')
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int, torch.int16,
                                                      torch.uint8, torch.int8):
            raise ValueError(f'tokens must be integer ids [B, N], got {tuple(tokens.shape)} '
                             f'{tokens.dtype}')
        n = tokens.shape[1]
        h, w = self.grid
        if n != h * w:
            side = int(round(n**0.5))
            if side * side != n:
                raise ValueError(f'{n} tokens do not form the {h}x{w} grid or a square one')
            h = w = side
        ids = tokens.long()
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f'token ids must lie in [0, {self.vocab_size})')
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            weight = self.decoder.blocks.input.w
            one_hot = F.one_hot(ids.view(-1, h, w), self.vocab_size)
            one_hot = one_hot.permute(0, 3, 1, 2).to(weight.dtype)
            stats = self.decoder(one_hot).float()
            return unmap_pixels(torch.sigmoid(stats[:, :self.decoder.output_channels]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`tokenize`."""
        return self.tokenize(images)
