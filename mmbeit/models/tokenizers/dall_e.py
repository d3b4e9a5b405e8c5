"""DALL-E dVAE tokenizer: the target generator of BEiT v1 (BEiT paper section 2.1.2;
docs/method.md, "DALL-E dVAE (BEiT v1)").

OpenAI's discrete VAE from DALL-E. Its encoder turns an image into a grid of logits over a
visual vocabulary of 8192 codes; the argmax at every position is the token BEiT v1 learns
to predict for the matching patch. A 112 x 112 image (the second view: the same crop as
the 224 view, resized) gives a 14 x 14 grid, one token per 16 x 16 patch of the 224 view.
The decoder maps tokens back to pixels; BEiT only needs it to look at what tokens mean
(:meth:`DALLETokenizer.decode`).

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

Weights. Plain state dicts in OpenAI's module layout (``blocks.input.w``, ...), read
weights-only through :mod:`mmbeit.checkpoint` and loaded strictly
(:func:`load_dalle_weights`): a missing, unexpected or wrongly shaped key raises
:class:`~mmbeit.checkpoint.CheckpointMismatchError` naming the file and the keys.
mmpretrain's ``dalle_encoder.pth`` is such a file; the keys may sit in a container
(``state_dict``, ...) and under a prefix (``encoder.`` / ``decoder.``,
``target_generator.``, ``module.``). OpenAI's ``encoder.pkl`` / ``decoder.pkl`` are whole
pickled modules instead: convert each once with
``python tools/model_converters/dalle_to_state_dict.py SRC DST`` (a restricted reader that
runs nothing from the file); given directly, they are refused with that command.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmbeit.checkpoint import (
    UnsafeCheckpointError,
    load_state_dict_checked,
    read_state_dict,
    take_prefix,
)
from mmbeit.registry import MODELS

__all__ = [
    'DALLEConv', 'DALLEBlock', 'DALLEEncoder', 'DALLEDecoder', 'DALLETokenizer',
    'load_dalle_weights', 'dalle_state_dict', 'map_pixels', 'unmap_pixels',
    'LOGIT_LAPLACE_EPS'
]

LOGIT_LAPLACE_EPS = 0.1


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

_PARTS = ('encoder', 'decoder')
CONVERTER = 'tools/model_converters/dalle_to_state_dict.py'


def dalle_state_dict(state_dict: Dict[str, torch.Tensor],
                     part: str = 'encoder') -> 'OrderedDict[str, torch.Tensor]':
    """The DALL-E ``part``'s keys of an unwrapped state dict (``blocks.*``).

    Keys that already start with ``blocks.`` are kept as they are; otherwise the first of
    ``{part}.``, ``target_generator.`` (encoder only), ``target_generator.{part}.`` under
    which ``blocks.*`` keys sit is taken (an mmpretrain BEiT checkpoint holds the encoder
    under ``target_generator.``). When none fits, the dict is returned unchanged and the
    checked load names what does not fit.
    """
    if part not in _PARTS:
        raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
    if any(k.startswith('blocks.') for k in state_dict):
        return OrderedDict(state_dict)
    prefixes = [f'{part}.'] + (['target_generator.'] if part == 'encoder' else [])
    for prefix in prefixes + [f'target_generator.{part}.']:
        if any(k.startswith(prefix + 'blocks.') for k in state_dict):
            return take_prefix(state_dict, prefix)
    return OrderedDict(state_dict)


def _sizes(module: nn.Module) -> str:
    names = ('n_init', 'n_hid', 'n_blk_per_group', 'group_count', 'input_channels',
             'output_channels', 'vocab_size')
    return ', '.join(f'{n}={getattr(module, n)}' for n in names if hasattr(module, n))


def load_dalle_weights(path: str, part: str = 'encoder',
                       module: Optional[nn.Module] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Read DALL-E dVAE weights from a plain state-dict file (``blocks.*`` keys).

    The file is read weights-only (:func:`mmbeit.checkpoint.read_state_dict`, which
    unwraps containers and a ``module.`` prefix), then :func:`dalle_state_dict` takes the
    ``part``'s keys.

    Args:
        path (str): local file.
        part (str): ``'encoder'`` or ``'decoder'``.
        module (nn.Module, optional): if given (a :class:`DALLEEncoder` /
            :class:`DALLEDecoder`), the weights are loaded into it strictly
            (:func:`mmbeit.checkpoint.load_state_dict_checked`).

    Returns:
        OrderedDict[str, Tensor]: the ``part``'s tensors.

    Raises:
        UnsafeCheckpointError: the file holds pickled Python objects, e.g. OpenAI's
            ``encoder.pkl``; the message gives the converter command.
        CheckpointError: missing, truncated, corrupt or not a state dict (a subclass of
            it for each; all name the file).
        CheckpointMismatchError: (with ``module``) keys or shapes do not fit.
    """
    if part not in _PARTS:
        raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
    try:
        state_dict = read_state_dict(path)
    except UnsafeCheckpointError as exc:
        dst = osp.join(osp.dirname(osp.expanduser(str(path))), f'dalle_{part}.pth')
        found = re.search(r'GLOBAL ([\w.]+)', str(exc))
        named = f' (The file names {found.group(1)}.)' if found else ''
        raise UnsafeCheckpointError(
            f'DALL-E {part} weights {str(path)!r} are not a plain weights file: it holds '
            f'pickled Python objects, and mmbeit reads only weights at run time. OpenAI\'s '
            f'encoder.pkl / decoder.pkl are such files (whole pickled dall_e modules): '
            f'convert each once with `python {CONVERTER} {path} {dst}` (it reads them '
            f'without running anything from the file, and refuses anything else), then pass '
            f'{dst} as {part}_checkpoint.{named}') from exc
    state_dict = dalle_state_dict(state_dict, part)
    if module is not None:
        load_state_dict_checked(
            module, state_dict, source=f'DALL-E {part} weights {str(path)!r}',
            target=f'{type(module).__name__}({_sizes(module)})')
    return state_dict


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
                               'with_decoder=True (and decoder_checkpoint=dalle_decoder.pth)')
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
