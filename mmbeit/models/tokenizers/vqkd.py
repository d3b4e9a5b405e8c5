"""VQ-KD: vector-quantised knowledge distillation tokenizer of BEiT v2 (paper section 2.2,
unilm modeling_vqkd.py). One registered model serves both uses:

- **training** (``tools/train.py configs/vqkd/...``): encoder -> encode task layer (fp32)
  -> :class:`NormEMAQuantizer` -> decoder -> decode task layer, trained to reproduce a
  frozen teacher's patch features; loss = mean(1 - cos(rec, teacher)) + commitment.
- **target generator** for BEiT v2 pretraining: built without teacher and decoder,
  frozen (:meth:`VQKD.freeze`), :meth:`VQKD.tokenize` returns token ids [B, N].

Input range: ``tokenize`` / ``forward`` take RGB in [0, 1] (the data preprocessor divides
by 255). The encoder sees ``2x - 1`` ([-1, 1], unilm's ``process_type='default'``); the
teacher sees ``(x - teacher.mean) / teacher.std``.

Checkpoint layout = the official release (``encoder.*``, ``decoder.*``,
``quantize.embedding.weight`` ..., ``encode_task_layer.{0,2}.*``,
``decode_task_layer.{0,2}.*``), so the official
``vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth`` and checkpoints trained here
load with no conversion step. Two mechanisms make that hold:

- the encoder / decoder are :class:`BEiTViT` (plain ViT settings). Their per-token final
  LayerNorm is ``norm`` inside BEiTViT and ``fc_norm`` in the official file; the state
  dict is written with ``fc_norm`` and both names load.
- teacher weights never enter the state dict (the official loader deletes them too):
  they come from the teacher's own checkpoint every time the model is built. Keys
  starting with ``teacher.``, ``loss`` or ``scaling`` in a file are ignored.
"""
import copy
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel

from mmbeit.checkpoint import (
    LoadReport,
    format_keys,
    load_state_dict_checked,
    note_dropped,
    read_state_dict,
)
from mmbeit.models.backbones.beit_vit import BEiTViT
from mmbeit.models.utils import keep_out_of_checkpoints
from mmbeit.registry import MODELS

from .quantizer import NormEMAQuantizer

__all__ = ['VQKD', 'load_tokenizer_state_dict']

# BEiTViT settings that make the plain ViT of unilm's VQ-KD (unilm modeling_vqkd.py "Encoder").
_PLAIN_VIT = dict(use_abs_pos_emb=True, rel_pos_bias=None, layer_scale_init_value=0.,
                  qv_bias=True, out_type='featmap', final_norm=True)
_IGNORED_PREFIXES = ('teacher.', 'loss', 'scaling')  # teacher keys of a teacher-less model
_NORM_RENAME = re.compile(r'^((?:en|de)coder\.)norm\.')
_FC_NORM_RENAME = re.compile(r'^((?:en|de)coder\.)fc_norm\.')


def _task_layer(in_dims: int, out_dims: int) -> nn.Sequential:
    """Linear -> Tanh -> Linear (keys ``0.*`` and ``2.*``), init trunc-normal 0.02."""
    layer = nn.Sequential(nn.Linear(in_dims, in_dims), nn.Tanh(), nn.Linear(in_dims, out_dims))
    for m in (layer[0], layer[2]):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    return layer


def load_tokenizer_state_dict(path: str) -> 'OrderedDict[str, torch.Tensor]':
    """Read a tokenizer checkpoint weights-only and unwrap its container (``state_dict``,
    ``model`` or ``module``; a ``module.`` prefix on every key is stripped):
    :func:`mmbeit.checkpoint.read_state_dict`, whose errors name the file."""
    return read_state_dict(path)


@MODELS.register_module()
class VQKD(BaseModel):
    """VQ-KD tokenizer (see the module docstring).

    Args:
        encoder (dict): :class:`BEiTViT` arguments (``arch``, ``img_size``,
            ``patch_size``, ``drop_path_rate`` ...); the plain-ViT settings are fixed.
        decoder (dict): :class:`BEiTViT` arguments for the decoder (default 3 blocks of
            768 dims, 12 heads). Its input is the code grid, so ``img_size`` is the token
            grid, ``patch_size`` 1 and ``in_channels`` the code dimension.
        quantizer (dict): :class:`NormEMAQuantizer` arguments.
        teacher (dict, optional): a registered module mapping normalised images
            [B, 3, H, W] to patch features [B, N, C] (or a tuple whose last item is that,
            or a feature map [B, C, h, w]). Needed for training only.
        teacher_mean / teacher_std (tuple, optional): the teacher's normalisation in
            [0, 1] pixel units; default: the teacher's own ``mean`` / ``std``.
        teacher_input_size (int, optional): resize the images (bicubic) for the teacher.
        decoder_out_dims (int, optional): decode task layer width; default the teacher's
            ``out_channels`` (or ``embed_dims``), else 512 (CLIP ViT-B/16).
        with_decoder (bool): build the decoder (False for a pure target generator).
        checkpoint (str, optional): tokenizer weights loaded strictly in
            ``init_weights`` (official or mmbeit layout).
        frozen (bool): call :meth:`freeze` after building (target-generator mode).
    """

    def __init__(self, encoder: Optional[dict] = None, decoder: Optional[dict] = None,
                 quantizer: Optional[dict] = None, teacher: Optional[dict] = None,
                 teacher_mean: Optional[Sequence[float]] = None,
                 teacher_std: Optional[Sequence[float]] = None,
                 teacher_input_size: Optional[int] = None,
                 decoder_out_dims: Optional[int] = None, with_decoder: bool = True,
                 checkpoint: Optional[str] = None, frozen: bool = False,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        enc_cfg = dict(arch='base', img_size=224, patch_size=16)
        enc_cfg.update(encoder or {})
        enc_cfg.update(_PLAIN_VIT)
        self.encoder = BEiTViT(**enc_cfg)
        self.input_size = self.encoder.img_size
        self.grid = self.encoder.patch_resolution
        q_cfg = dict(quantizer or {})
        self.quantize = NormEMAQuantizer(**q_cfg)
        code_dims = self.quantize.embed_dims
        self.vocab_size = self.quantize.num_tokens
        self.encode_task_layer = _task_layer(self.encoder.embed_dims, code_dims)

        self.teacher = None
        if teacher is not None:
            self.teacher = MODELS.build(copy.deepcopy(teacher))
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            keep_out_of_checkpoints(self, 'teacher')
        mean = teacher_mean if teacher_mean is not None else getattr(self.teacher, 'mean', None)
        std = teacher_std if teacher_std is not None else getattr(self.teacher, 'std', None)
        if self.teacher is not None and (mean is None or std is None):
            raise ValueError(f'{type(self.teacher).__name__} has no mean/std attributes; give '
                             'teacher_mean and teacher_std (in [0, 1] pixel units) to VQKD')
        self.register_buffer('teacher_mean', torch.tensor(mean or (0., 0., 0.)).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('teacher_std', torch.tensor(std or (1., 1., 1.)).view(1, 3, 1, 1),
                             persistent=False)
        self.teacher_input_size = teacher_input_size

        self.decoder = self.decode_task_layer = None
        if with_decoder:
            dec_cfg = dict(arch=dict(embed_dims=768, num_layers=3, num_heads=12,
                                     feedforward_channels=3072))
            dec_cfg.update(decoder or {})
            dec_cfg.update(_PLAIN_VIT, img_size=self.grid, patch_size=1, in_channels=code_dims)
            self.decoder = BEiTViT(**dec_cfg)
            out_dims = (decoder_out_dims or getattr(self.teacher, 'out_channels', None)
                        or getattr(self.teacher, 'embed_dims', None) or 512)
            self.decode_task_layer = _task_layer(self.decoder.embed_dims, out_dims)
        self.checkpoint = checkpoint
        self._frozen = False
        self.register_state_dict_post_hook(_save_official_names)
        if frozen:
            self.freeze()

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        super().init_weights()
        if self.checkpoint:
            self.load_tokenizer(self.checkpoint)

    def load_tokenizer(self, path: str) -> LoadReport:
        """Load tokenizer weights strictly through
        :func:`~mmbeit.checkpoint.load_state_dict_checked`: a missing, surplus or
        mis-shaped key raises :class:`~mmbeit.checkpoint.CheckpointMismatchError` naming
        the file and the keys (the teacher is not part of the tokenizer's weights). Returns
        the load's report (also logged as one table)."""
        path = str(path)
        state = load_tokenizer_state_dict(path)
        return load_state_dict_checked(
            self, state, source=repr(path),
            hint='Check that the encoder / decoder / quantizer sizes of the config match the '
            'file.')

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        not_tokenizer, no_decoder = [], []
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            rel = key[len(prefix):]
            if rel.startswith(_IGNORED_PREFIXES):
                not_tokenizer.append(key)
                state_dict.pop(key)
            elif self.decoder is None and rel.startswith(('decoder.', 'decode_task_layer.')):
                no_decoder.append(key)
                state_dict.pop(key)
            elif _FC_NORM_RENAME.match(rel):
                # the official name of the final LayerNorm (module docstring): not a change
                state_dict[prefix + _FC_NORM_RENAME.sub(r'\1norm.', rel)] = state_dict.pop(key)
        if not_tokenizer:
            note_dropped(format_keys(not_tokenizer, 3),
                         'not tokenizer weights (teacher, loss, scaling layer): the teacher '
                         'loads from its own checkpoint')
        if no_decoder:
            note_dropped(format_keys(no_decoder, 3),
                         'the decoder, which this model does not build (with_decoder=False)')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ modes
    def freeze(self) -> 'VQKD':
        """Target-generator mode: eval forever, no gradients."""
        self.requires_grad_(False)
        self._frozen = True
        return self.train(False)

    def train(self, mode: bool = True) -> 'VQKD':
        super().train(mode and not self._frozen)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ------------------------------------------------------------------ computation
    def _check_input(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[-2:]) != tuple(self.input_size):
            raise ValueError(f'VQKD expects images [B, 3, {self.input_size[0]}, '
                             f'{self.input_size[1]}] in [0, 1], got {tuple(images.shape)}')

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in [0, 1] -> (z_q [B, N, d], commitment loss, ids [B, N])."""
        self._check_input(images)
        feats = self.encoder(images * 2 - 1)[-1]  # [B, D, h, w]
        feats = feats.flatten(2).transpose(1, 2)  # [B, N, D]
        with torch.autocast(device_type=feats.device.type, enabled=False):
            z = self.encode_task_layer(feats.float())  # [B, N, d]
            return self.quantize(z)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q [B, N, d] -> reconstructed teacher features [B, N, C]."""
        if self.decoder is None:
            raise RuntimeError('this VQKD was built with with_decoder=False; build it with a '
                               'decoder to reconstruct features')
        b, n, d = z_q.shape
        x = z_q.transpose(1, 2).reshape(b, d, *self.grid)  # [B, d, h, w]
        y = self.decoder(x)[-1].flatten(2).transpose(1, 2)  # [B, N, D]
        return self.decode_task_layer(y)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids [B, N] (long) for RGB images in [0, 1]; never updates the codebook."""
        was_training = self.training
        self.quantize.eval()
        try:
            return self.encode(images)[2]
        finally:
            self.quantize.train(was_training)

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's patch features [B, N, C] for images in [0, 1]."""
        if self.teacher is None:
            raise RuntimeError('this VQKD has no teacher; give teacher=dict(type=...) to train')
        if self.teacher_input_size is not None:
            images = F.interpolate(images, size=self.teacher_input_size, mode='bicubic',
                                   align_corners=False)
        out = self.teacher((images - self.teacher_mean) / self.teacher_std)
        if isinstance(out, (tuple, list)):
            out = out[-1]
        if out.dim() == 4:
            out = out.flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, N, C]
        n = self.grid[0] * self.grid[1]
        if out.dim() != 3 or out.shape[1] != n:
            raise ValueError(f'the teacher gives features of shape {tuple(out.shape)}, but the '
                             f'tokenizer has {n} tokens ({self.grid[0]}x{self.grid[1]}); match '
                             'the patch grids or set teacher_input_size')
        return out

    def loss(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        z_q, loss_q, _ = self.encode(images)
        rec = self.decode(z_q)
        target = self.teacher_features(images)
        if rec.shape[-1] != target.shape[-1]:
            raise ValueError(f'decoder output has {rec.shape[-1]} channels, the teacher '
                             f'{target.shape[-1]}; set decoder_out_dims={target.shape[-1]}')
        cos = F.cosine_similarity(rec.float(), target.float(), dim=-1)  # [B, N]
        return dict(loss_rec=(1 - cos).mean(), loss_quant=loss_q)

    def forward(self, inputs: torch.Tensor, data_samples: Optional[list] = None,
                mode: str = 'tensor'):
        """``mode='loss'``: dict of losses; ``'tensor'``: token ids [B, N];
        ``'predict'``: the data samples with a ``tokens`` field ([N] long)."""
        if mode == 'loss':
            return self.loss(inputs)
        if mode == 'tensor':
            return self.tokenize(inputs)
        if mode == 'predict':
            ids = self.tokenize(inputs)
            if data_samples is None:
                raise ValueError("mode='predict' needs data_samples to attach tokens to")
            for sample, tok in zip(data_samples, ids):
                sample.set_field(tok, 'tokens')
            return data_samples
        raise ValueError(f"VQKD.forward: mode must be 'loss', 'tensor' or 'predict', "
                         f'got {mode!r}')


def _save_official_names(module, state_dict, prefix, local_metadata):
    """State-dict hook: write the encoder's / decoder's final LNs as ``fc_norm``."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix):]
        if _NORM_RENAME.match(rel):
            state_dict[prefix + _NORM_RENAME.sub(r'\1fc_norm.', rel)] = state_dict.pop(key)
