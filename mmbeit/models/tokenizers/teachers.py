"""Frozen teacher networks whose features VQ-KD learns to reconstruct (unilm modeling_vqkd.py).

VQ-KD (BEiT v2) trains its tokenizer by regressing, for every patch, the feature a frozen
teacher produces for that patch. Two teachers are provided, both registered in
``mmbeit.registry.MODELS``:

* ``CLIPViT``: the image encoder of OpenAI CLIP (ViT-B/16 by default). Its output is
  ``ln_post`` applied to every token, the cls token dropped, and the result multiplied by
  ``proj``: [B, 196, 512] for a 224 input. State-dict keys are OpenAI's exactly (the
  ``visual.*`` keys of an OpenAI CLIP state dict without the prefix); a full CLIP state dict
  with the ``visual.`` prefix also loads, its text tower left out (noted in the load report).
* ``DINOViT``: a DINO ViT (ViT-B/16 by default) in timm's / facebookresearch's layout,
  built on our ``BEiTViT`` (absolute position embedding, no relative bias, no LayerScale);
  its output is the final-normed patch tokens [B, 196, 768].

Interface used by the VQ-KD algorithm. ``forward(x)`` takes a batch [B, 3, H, W] that is
ALREADY normalised with the teacher's own statistics, i.e. ``(x01 - mean) / std`` for an
image ``x01`` in [0, 1], and returns patch features [B, N, C] without a cls token. Each
teacher exposes ``mean`` and ``std`` (tuples in [0, 1] pixel units), ``out_channels`` (C),
``patch_size`` and ``img_size`` / ``patch_resolution`` (the grid its position embedding
was built for; another grid raises). The teacher is frozen: its parameters do not require
grad and ``train()`` keeps it in eval mode.

Weights. Pass ``checkpoint=PATH`` (loaded when the module is built) or
``init_cfg=dict(type='Pretrained', checkpoint=PATH[, prefix=...])`` (loaded by
``init_weights()``, mmengine's convention). Both load STRICTLY through
:mod:`mmbeit.checkpoint`, unlike mmengine's ``PretrainedInit``: the file is read
weights-only (:func:`~mmbeit.checkpoint.read_state_dict`: a missing, truncated or unsafe file
raises a :class:`~mmbeit.checkpoint.CheckpointError` naming it; a ``state_dict`` / ``model``
/ ``module`` container is unwrapped) and compared with the teacher by
:func:`~mmbeit.checkpoint.load_state_dict_checked`: a missing, unexpected or mis-shaped key
raises :class:`~mmbeit.checkpoint.CheckpointMismatchError` naming the keys and the file.
Nothing may stay at its random init. What the load did (loaded, adapted, dropped) is kept
as ``teacher.load_report`` and logged as one table.

* CLIP: OpenAI's ``ViT-B-16.pt`` (from the URL list in openai/CLIP's ``clip/clip.py``) is
  a TorchScript archive, not a state dict; convert it once with
  ``python tools/model_converters/clip_to_state_dict.py ViT-B-16.pt clip_vit_b16.pth``.
* DINO: ``dino_vitbase16_pretrain.pth`` from facebookresearch/dino, or timm's
  ``vit_base_patch16_224.dino`` weights (``timm.create_model(...).state_dict()`` saved with
  ``torch.save``) load directly. timm's ``blocks.i.attn.qkv.bias`` [3D] becomes our
  ``q_bias`` / ``v_bias``; its key third is dropped, which changes nothing: adding one
  vector b_k to every key adds q . b_k to all the logits of a query alike, and softmax is
  invariant to a constant added to all its inputs. ``head.*`` (a classifier) is dropped.
"""
import logging
import os.path as osp
import re
import zipfile
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mmbeit.checkpoint import (
    CheckpointError,
    format_keys,
    load_state_dict_checked,
    note_adapted,
    note_dropped,
    read_state_dict,
    take_prefix,
)
from mmbeit.registry import MODELS

from ..backbones.beit_vit import BEiTViT
from ..utils.rel_pos import to_2tuple

__all__ = ['TeacherCheckpointError', 'CLIPViT', 'DINOViT', 'QuickGELU', 'CLIPLayerNorm',
           'is_torchscript_archive', 'read_teacher_state_dict', 'clip_visual_state_dict',
           'CLIP_MEAN', 'CLIP_STD', 'IMAGENET_MEAN', 'IMAGENET_STD']

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TeacherCheckpointError(CheckpointError):
    """A teacher file that cannot be used for a reason of its own kind: a TorchScript
    archive, no key under the given prefix, an ambiguous DINO qkv bias. A file that is
    missing or unreadable raises the other :class:`~mmbeit.checkpoint.CheckpointError`
    types, one that does not fit :class:`~mmbeit.checkpoint.CheckpointMismatchError`."""


def is_torchscript_archive(path: str) -> bool:
    """True when ``path`` is a TorchScript zip (it has a ``constants.pkl`` record), as
    OpenAI's CLIP downloads are; a ``torch.save`` file has none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split('/')[-1] == 'constants.pkl' for name in zf.namelist())


def read_teacher_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """:func:`~mmbeit.checkpoint.read_state_dict`, after refusing a TorchScript archive
    (OpenAI's CLIP download) with the command that converts it."""
    path = osp.expanduser(str(path))
    if osp.isfile(path) and is_torchscript_archive(path):
        raise TeacherCheckpointError(
            f'{path!r} is a TorchScript archive (as OpenAI distributes CLIP), not a state '
            'dict; convert it once with: python tools/model_converters/clip_to_state_dict.py '
            f'{path} OUT.pth')
    return read_state_dict(path)


def clip_visual_state_dict(state_dict: Dict[str, torch.Tensor],
                           prefix: str = '') -> Tuple[Dict[str, torch.Tensor], int]:
    """If ``state_dict`` holds a full CLIP model (``{prefix}visual.conv1.weight``), return
    the ``visual.*`` keys with ``visual.`` removed (under ``prefix``) and the number of
    other keys under ``prefix`` (text tower, logit_scale, ...) that were left out; keys
    outside ``prefix`` are kept. Otherwise return it unchanged and 0."""
    vis = prefix + 'visual.'
    if vis + 'conv1.weight' not in state_dict:
        return state_dict, 0
    out, ignored = OrderedDict(), 0
    for key, value in state_dict.items():
        if key.startswith(vis):
            out[prefix + key[len(vis):]] = value
        elif key.startswith(prefix):
            ignored += 1
        else:
            out[key] = value
    return out, ignored


class _FrozenTeacher:
    """Shared by the teachers: frozen parameters, eval mode, strict checkpoint loading.

    Mixed in before a ``BaseModule`` subclass; ``_setup_teacher`` is called at the end of
    ``__init__``.
    """
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def _setup_teacher(self, checkpoint: Optional[str], init_cfg) -> None:
        self.pretrained_cfg = None
        if init_cfg is not None:
            if not (isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'
                    and init_cfg.get('checkpoint')):
                raise ValueError(f'{type(self).__name__} takes init_cfg=None or '
                                 "dict(type='Pretrained', checkpoint=PATH[, prefix=...]), "
                                 f'got {init_cfg!r}')
            if checkpoint is not None:
                raise ValueError('give the teacher weights either as checkpoint= or as a '
                                 'Pretrained init_cfg, not both')
            self.pretrained_cfg = dict(init_cfg)
        self.loaded_from = None
        self.load_report = None
        for p in self.parameters():
            p.requires_grad = False
        self.train(False)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    def train(self, mode: bool = True):
        """The teacher stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    def init_weights(self) -> None:
        """Load the Pretrained ``init_cfg`` strictly, or keep random weights (logged)."""
        if self.is_init:
            return
        if self.pretrained_cfg is not None:
            self.load_checkpoint(self.pretrained_cfg['checkpoint'],
                                 self.pretrained_cfg.get('prefix'))
        else:
            self._init_random()
            print_log(f'{type(self).__name__}: no checkpoint given, the teacher keeps RANDOM '
                      'weights (fine for tests, useless for VQ-KD training)',
                      logger='current', level=logging.WARNING)
        self._is_init = True

    def _init_random(self) -> None:
        raise NotImplementedError

    def load_checkpoint(self, filename: str, prefix: Optional[str] = None) -> None:
        """Load ``filename`` strictly (every key of the model, nothing else), through
        :func:`~mmbeit.checkpoint.load_state_dict_checked`; the report is kept as
        ``self.load_report``.

        ``prefix``: take only the keys starting with it and remove it (e.g. ``'teacher.'``
        for a VQ-KD checkpoint); how many other keys were left out is in the report.
        """
        filename = str(filename)
        state_dict = read_teacher_state_dict(filename)
        source = repr(filename)
        if prefix:
            kept = take_prefix(state_dict, prefix)
            if not kept:
                raise TeacherCheckpointError(
                    f'no key of {source} starts with prefix {prefix!r} (first keys: '
                    f'{format_keys(list(state_dict)[:5])}); set the prefix of init_cfg to '
                    'the one the teacher keys carry, or leave it out for a bare state dict')
            source += f' (keys under {prefix!r}'
            others = len(state_dict) - len(kept)
            source += f', {others} other key(s) left out)' if others else ')'
            state_dict = kept
        try:
            self.load_report = load_state_dict_checked(
                self, state_dict, source=source,
                hint='The teacher is loaded strictly: check its settings (arch, patch_size, '
                'img_size) against the checkpoint.')
        except TeacherCheckpointError as exc:  # raised by a load hook, which has no file name
            raise TeacherCheckpointError(f'{source}: {exc}') from None
        self.loaded_from = filename
        self._is_init = True

    def _check_grid(self, grid: Tuple[int, int]) -> None:
        if tuple(grid) != tuple(self.patch_resolution):
            raise ValueError(f'{type(self).__name__}: input patch grid {tuple(grid)} differs '
                             f'from the teacher grid {tuple(self.patch_resolution)} '
                             f'(img_size={self.img_size}, patch_size={self.patch_size}); '
                             'resize the teacher input to img_size')


# ---------------------------------------------------------------------------------------
# CLIP ViT (OpenAI layout)
# ---------------------------------------------------------------------------------------
class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype (as CLIP does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names:
    ``in_proj_weight`` [3W, W], ``in_proj_bias`` [3W] (q, k, v stacked), ``out_proj``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f'width {width} is not divisible by {heads} heads')
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # [B, N+1, W]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, N+1, 3W]
        qkv = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, nH, N+1, hd]; SDPA scales by hd ** -0.5
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class CLIPMlp(nn.Module):
    """c_fc (W -> 4W) -> QuickGELU -> c_proj (keys ``mlp.c_fc``, ``mlp.c_proj``)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class CLIPResBlock(nn.Module):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.ln_1 = CLIPLayerNorm(width, eps=eps)
        self.attn = CLIPAttention(width, heads)
        self.ln_2 = CLIPLayerNorm(width, eps=eps)
        self.mlp = CLIPMlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CLIPTransformer(nn.Module):
    """Stack of residual blocks (keys ``transformer.resblocks.i``)."""

    def __init__(self, width: int, layers: int, heads: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [CLIPResBlock(width, heads, hidden, eps) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x)
        return x


@MODELS.register_module()
class CLIPViT(_FrozenTeacher, BaseModule):
    """OpenAI CLIP image encoder as a frozen VQ-KD teacher (unilm modeling_vqkd.py).

    ``forward(x)``: x [B, 3, H, W] normalised with ``CLIP_MEAN`` / ``CLIP_STD`` ->
    ``ln_post(tokens)[:, 1:] @ proj`` [B, N, output_dim].

    Args:
        arch (str | dict): 'base' (ViT-B: width 768, 12 layers, 12 heads, output_dim 512)
            or 'large' (ViT-L: 1024, 24, 16, 768), or a dict with width, layers, heads,
            output_dim and optionally mlp_ratio (default 4).
        img_size (int | tuple): input size the position embedding is built for (224).
        patch_size (int): 16 for ViT-B/16 (14 for ViT-L/14).
        checkpoint (str, optional): state dict loaded (strictly) right away.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loaded strictly by ``init_weights()``.
    """
    mean = CLIP_MEAN
    std = CLIP_STD
    arch_zoo = {
        **dict.fromkeys(['b', 'base'], dict(width=768, layers=12, heads=12, output_dim=512)),
        **dict.fromkeys(['l', 'large'], dict(width=1024, layers=24, heads=16, output_dim=768)),
    }

    def __init__(self, arch: Union[str, dict] = 'base', img_size=224, patch_size: int = 16,
                 in_channels: int = 3, checkpoint: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=None)
        if isinstance(arch, str):
            if arch.lower() not in self.arch_zoo:
                raise KeyError(f'unknown arch {arch!r}; choose from {set(self.arch_zoo)}')
            arch = self.arch_zoo[arch.lower()]
        needed = {'width', 'layers', 'heads', 'output_dim'}
        if not isinstance(arch, dict) or not needed <= set(arch):
            raise ValueError(f'a custom arch must be a dict with keys {sorted(needed)}')
        self.width = width = arch['width']
        self.num_layers = arch['layers']
        self.num_heads = arch['heads']
        self.out_channels = arch['output_dim']
        hidden = int(width * arch.get('mlp_ratio', 4))
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.patch_resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_tokens = self.patch_resolution[0] * self.patch_resolution[1] + 1

        self.conv1 = nn.Conv2d(in_channels, width, patch_size, patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(num_tokens, width))
        self.ln_pre = CLIPLayerNorm(width, eps=1e-5)
        self.transformer = CLIPTransformer(width, self.num_layers, self.num_heads, hidden)
        self.ln_post = CLIPLayerNorm(width, eps=1e-5)
        self.proj = nn.Parameter(torch.zeros(width, self.out_channels))
        self._init_random()
        self._setup_teacher(checkpoint, init_cfg)

    @torch.no_grad()
    def _init_random(self) -> None:
        """Random init on CLIP's scales (the teacher is meant to be loaded)."""
        width = self.width
        scale = width ** -0.5
        self.class_embedding.normal_(0, scale)
        self.positional_embedding.normal_(0, scale)
        self.proj.normal_(0, scale)
        proj_std = scale * (2 * self.num_layers) ** -0.5
        for blk in self.transformer.resblocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=scale)
            nn.init.zeros_(blk.attn.in_proj_bias)
            nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(blk.attn.out_proj.bias)
            nn.init.normal_(blk.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.zeros_(blk.mlp.c_fc.bias)
            nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(blk.mlp.c_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] (CLIP-normalised) -> patch features [B, N, output_dim]."""
        x = self.conv1(x)  # [B, W, Hp, Wp]
        self._check_grid(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # [B, N, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, W]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, N+1, W]
        x = self.transformer(self.ln_pre(x))
        # ln_post is per token, so normalising the patch tokens only is the same as
        # normalising all tokens and then dropping cls (unilm modeling_vqkd.py).
        x = self.ln_post(x[:, 1:])  # [B, N, W]
        return x @ self.proj.to(x.dtype)  # [B, N, output_dim]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # A full CLIP state dict: keep the image tower, drop the rest (noted).
        if prefix + 'visual.conv1.weight' in state_dict:
            visual, ignored = clip_visual_state_dict(state_dict, prefix)
            state_dict.clear()
            state_dict.update(visual)
            note_adapted(f'{prefix}visual.*', 'the image tower of a full CLIP state dict, '
                         'prefix visual. removed')
            if ignored:
                note_dropped(f'{ignored} other key(s) under {prefix!r}',
                             'text tower, logit_scale, ... of a full CLIP state dict')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)


# ---------------------------------------------------------------------------------------
# DINO ViT (timm / facebookresearch layout) on top of BEiTViT
# ---------------------------------------------------------------------------------------
_QKV_BIAS = re.compile(r'blocks\.(\d+)\.attn\.qkv\.bias')


@MODELS.register_module()
class DINOViT(_FrozenTeacher, BEiTViT):
    """DINO ViT as a frozen VQ-KD teacher (unilm modeling_vqkd.py, the alternative to CLIP).

    A ``BEiTViT`` with an absolute position embedding, no relative position bias, no
    LayerScale and the final ``norm``; ``forward(x)``: x [B, 3, H, W] normalised with
    ImageNet mean/std -> ``norm(tokens)[:, 1:]`` [B, N, embed_dims].

    Args:
        arch (str | dict): as ``BEiTViT`` ('base' = ViT-B: 768 dims, 12 layers, 12 heads).
        img_size, patch_size, in_channels: as ``BEiTViT`` (224, 16, 3).
        norm_eps (float): LayerNorm eps, 1e-6 in timm's and DINO's ViT.
        checkpoint (str, optional): state dict loaded (strictly) right away.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loaded strictly by ``init_weights()``.

    timm-layout keys are mapped on load (also through mmengine's loaders): ``qkv.bias``
    [3D] -> ``q_bias`` = bias[:D], ``v_bias`` = bias[2D:] (the key bias is dropped, see
    the module docstring), and ``head.*`` is dropped; both are noted in the load report
    (logged when loaded outside :meth:`load_checkpoint`).
    """
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, arch: Union[str, dict] = 'base', img_size=224, patch_size: int = 16,
                 in_channels: int = 3, norm_eps: float = 1e-6,
                 checkpoint: Optional[str] = None, init_cfg: Optional[dict] = None):
        super().__init__(arch=arch, img_size=img_size, patch_size=patch_size,
                         in_channels=in_channels, use_abs_pos_emb=True, rel_pos_bias=None,
                         qv_bias=True, layer_scale_init_value=0., out_indices=-1,
                         out_type='raw', final_norm=True, norm_eps=norm_eps, init_cfg=None)
        self._setup_teacher(checkpoint, init_cfg)

    @property
    def out_channels(self) -> int:
        return self.embed_dims

    def _init_random(self) -> None:
        BEiTViT.init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] (ImageNet-normalised) -> patch features [B, N, embed_dims]."""
        self._check_grid((x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size))
        return super().forward(x)[-1][:, 1:]  # final-normed tokens [B, N+1, D] -> [B, N, D]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        dims = self.embed_dims
        mapped = 0
        for key in [k for k in state_dict if k.startswith(prefix)]:
            m = _QKV_BIAS.fullmatch(key[len(prefix):])
            if m is None or state_dict[key].shape != (3 * dims, ):
                continue  # anything else that does not fit is left for the strict check
            base = f'{prefix}blocks.{m.group(1)}.attn.'
            if base + 'q_bias' in state_dict or base + 'v_bias' in state_dict:
                raise TeacherCheckpointError(f'{key} and {base}q_bias/v_bias are both in '
                                             'the state dict; which one holds is ambiguous: '
                                             'keep one of them')
            bias = state_dict.pop(key)
            # The key bias bias[D:2D] is dropped: it adds q . b_k to every logit of a
            # query alike, and softmax ignores a constant shift (module docstring).
            state_dict[base + 'q_bias'] = bias[:dims]
            state_dict[base + 'v_bias'] = bias[2 * dims:]
            mapped += 1
        if mapped:
            note_adapted(f'{prefix}blocks.*.attn.qkv.bias ({mapped})',
                         'timm [3D] bias split into q_bias / v_bias; the key third is '
                         'dropped (softmax is invariant to it)')
        head = [k for k in state_dict if k.startswith(prefix + 'head.')]
        for key in head:
            del state_dict[key]
        if head:
            note_dropped(f'{prefix}head.* ({len(head)})',
                         'a classifier; the teacher returns patch features')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
