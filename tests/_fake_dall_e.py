"""OpenAI-style DALL-E files for the tests: a stand-in ``dall_e`` package (OpenAI's class,
attribute and parameter names; plain nn.Modules instead of attrs classes) pickles a tiny
encoder and decoder the way OpenAI's ``encoder.pkl`` / ``decoder.pkl`` are pickled.

Used by tests/test_checkpoint/test_pickled_modules.py (the restricted reader),
tests/test_tools/test_dalle_converter.py (the converter) and
tests/test_models/test_dall_e.py (a pickled file given to the tokenizer).
"""
import importlib
import shutil
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

#: The module classes the stand-in package's files name (OpenAI's names).
DALLE_CLASSES = (
    'dall_e.encoder.Encoder', 'dall_e.encoder.EncoderBlock',
    'dall_e.decoder.Decoder', 'dall_e.decoder.DecoderBlock',
    'dall_e.utils.Conv2d',
    'torch.nn.modules.container.Sequential', 'torch.nn.modules.activation.ReLU',
    'torch.nn.modules.linear.Identity', 'torch.nn.modules.pooling.MaxPool2d',
    'torch.nn.modules.upsampling.Upsample',
)

#: Sizes of the tiny pickled networks, as DALLEEncoder / DALLEDecoder arguments.
TINY_ENC = dict(n_hid=8, n_blk_per_group=1, vocab_size=32)
TINY_DEC = dict(n_init=8, n_hid=8, n_blk_per_group=1)

#: The files written: (format, part); 'zip' is torch's zip format, 'legacy' torch's legacy
#: format as OpenAI's files are (protocol 2), 'legacy_p1' the same at pickle protocol 1.
FORMATS = ('zip', 'legacy', 'legacy_p1')

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


def write_openai_files(root: Path) -> dict:
    """Pickle a tiny encoder / decoder of the stand-in package in every format under root.

    Returns dict(files={(format, part): path}, state={part: state dict},
    ref=dict(x, logits, ids, dec_out): the pickled modules' own outputs). The package is
    importable only while the files are written; it is then removed from sys.modules,
    sys.path and the disk, so reading the files cannot use it.
    """
    src = root / 'src'
    (src / 'dall_e').mkdir(parents=True)
    (src / 'dall_e' / '__init__.py').write_text('')
    (src / 'dall_e' / 'utils.py').write_text(textwrap.dedent(_UTILS))
    (src / 'dall_e' / 'encoder.py').write_text(textwrap.dedent(_ENCODER))
    (src / 'dall_e' / 'decoder.py').write_text(textwrap.dedent(_DECODER))
    _drop_dall_e_modules()
    sys.path.insert(0, str(src))
    try:
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
