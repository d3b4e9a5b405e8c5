"""HOG tokens: a visual tokenizer without a network, for images no teacher knows.

BEiT v2 tokens come from a VQ-KD that distils a pretrained teacher (CLIP). Where no such
teacher can be had (the bundled demo, which downloads nothing) or where its features mean
little, the target has to come from the images themselves. ``HOGTokenizer`` describes
each patch by its histograms of oriented gradients (Dalal and Triggs; MaskFeat's
regression target) and quantises that description directly:

* token 0: a flat patch, whose centred HOG is shorter than ``flat_threshold``;
* token 1 + k: otherwise, the nearest (cosine) of ``num_tokens - 1`` unit centroids,
  fitted once by spherical k-means on the pretraining views
  (``tools/misc/fit_hog_tokenizer.py``); the codebook is the tokenizer's only state.

Why not a VQ-KD distilling HOG: measured on the demo (configs/demo/README.md), VQ-KD
cannot distil it at that scale. Plain HOG is non-negative and isotropic on average, so
predicting the mean already scores cosine 0.74 and the codebook collapses; centred, it
still collapses, and the tiny encoder does not learn HOG from pixels in the demo budget
even without the quantizer. Quantising the descriptor itself needs no encoder at all.

The descriptor of a patch: per pixel, the gradient (centred differences, replicated
border) of the colour channel where it is largest; its unsigned orientation in [0, pi)
is split linearly between the two nearest of ``bins`` orientation bins, weighted by the
gradient magnitude; the bins are averaged over ``cell_size`` x ``cell_size`` cells; a
patch's (patch_size / cell_size)^2 cell histograms are concatenated and their mean is
subtracted (the centred HOG says how the patch's gradients deviate from isotropic).
Units are those of the [0, 1] image per pixel: on the demo images pixel noise gives
lengths about 0.02 and textured objects 0.15-0.55, so 0.05 splits them. The descriptor
does not see colour or brightness, only edges and texture orientation.

Precision: descriptors and assignments run in fp32 with autocast switched off (under bf16
autocast the cosine matmul would round and move tokens whose top two codes nearly tie),
and whether the codebook is fitted is read from the device only when the codebook buffer
was written, not on every tokenize call.
"""
import math
import os.path as osp
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmbeit.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_state_dict_checked,
    read_checkpoint,
    unwrap_state_dict,
)
from mmbeit.registry import MODELS

from ..utils.rel_pos import to_2tuple
from .quantizer import HostCachedFlag, codebook_usage_stats, spherical_kmeans

__all__ = ['patch_hog', 'HOGTokenizer']


def patch_hog(images: torch.Tensor, patch_size: int, cell_size: int,
              bins: int) -> torch.Tensor:
    """Raw histograms of oriented gradients per patch (see the module docstring).

    images [B, C, H, W] (any range; the tokenizer passes [0, 1]) -> [B, N, D] float32
    with N = (H / patch_size) * (W / patch_size) patches in row-major order and
    D = bins * (patch_size / cell_size)^2, ordered (cell row, cell column, bin). Values
    are non-negative; not centred, not normalised.
    """
    b, _, h, w = images.shape
    p, c = patch_size, cell_size
    if p % c or h % p or w % p:
        raise ValueError(f'patch_hog: image {h}x{w}, patch_size={p}, cell_size={c}: the '
                         'image must be a multiple of the patch, the patch of the cell')
    x = images.float()
    pad = F.pad(x, (1, 1, 1, 1), mode='replicate')
    gx = pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]
    gy = pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1]
    mag = torch.sqrt(gx**2 + gy**2)                                     # [B, C, H, W]
    best = mag.argmax(1, keepdim=True)
    mag = mag.gather(1, best)[:, 0]                                     # [B, H, W]
    theta = torch.atan2(gy.gather(1, best), gx.gather(1, best))[:, 0] % math.pi
    # bin k is centred at (k + 0.5) * pi / bins; orientations wrap around
    pos = theta * (bins / math.pi) - 0.5
    low = torch.floor(pos)
    frac = pos - low
    low = low.long() % bins
    hist = x.new_zeros(b, bins, h, w)
    hist.scatter_add_(1, low[:, None], (mag * (1 - frac))[:, None])
    hist.scatter_add_(1, ((low + 1) % bins)[:, None], (mag * frac)[:, None])
    cells = F.avg_pool2d(hist, c)                                       # [B, bins, H/c, W/c]
    k, gh, gw = p // c, h // p, w // p
    cells = cells.view(b, bins, gh, k, gw, k).permute(0, 2, 4, 3, 5, 1)
    return cells.reshape(b, gh * gw, k * k * bins)


@MODELS.register_module()
class HOGTokenizer(BaseModule):
    """Tokens of patches from their HOG (see the module docstring).

    Target-generator interface (docs/contracts.md): ``tokenize(images in [0, 1]) -> ids
    [B, N]``, ``vocab_size``, ``input_size``, ``grid``, ``freeze()``.

    Args:
        num_tokens (int): vocabulary size, the flat token included (head.vocab_size).
        input_size (int | tuple): tokenizer view size (the pretraining's target_size).
        patch_size (int): must equal the backbone's, so that tokens match patches.
        cell_size (int): HOG cell side; patch_size must be a multiple of it.
        bins (int): orientation bins over [0, pi).
        flat_threshold (float): a patch whose centred HOG is shorter is token 0.
        checkpoint (str, optional): a codebook written by
            ``tools/misc/fit_hog_tokenizer.py``, loaded by ``init_weights``. Without
            one the tokenizer cannot tokenize (an error says how to fit one).
    """

    def __init__(self, num_tokens: int, input_size: Union[int, Sequence[int]],
                 patch_size: int = 8, cell_size: int = 4, bins: int = 9,
                 flat_threshold: float = 0.05, checkpoint: Optional[str] = None,
                 init_cfg=None):
        super().__init__(init_cfg)
        self.input_size = to_2tuple(input_size)
        if num_tokens < 2:
            raise ValueError(f'HOGTokenizer: num_tokens={num_tokens}; the flat token and at '
                             'least one texture token are needed')
        if patch_size % cell_size:
            raise ValueError(f'HOGTokenizer: patch_size={patch_size} is not a multiple of '
                             f'cell_size={cell_size}')
        if any(s % patch_size for s in self.input_size):
            raise ValueError(f'HOGTokenizer: input_size={self.input_size} is not a multiple '
                             f'of patch_size={patch_size}')
        if bins < 2:
            raise ValueError(f'HOGTokenizer: bins={bins}; use at least 2 orientation bins')
        if not flat_threshold > 0:
            raise ValueError(f'HOGTokenizer: flat_threshold={flat_threshold} must be > 0')
        self.vocab_size = num_tokens
        self.patch_size = patch_size
        self.cell_size = cell_size
        self.bins = bins
        self.flat_threshold = float(flat_threshold)
        self.checkpoint = checkpoint
        self.grid = (self.input_size[0] // patch_size, self.input_size[1] // patch_size)
        self.descriptor_dims = bins * (patch_size // cell_size)**2
        # unfitted: zero rows (a fitted row is a unit vector)
        self.register_buffer('codebook', torch.zeros(num_tokens - 1, self.descriptor_dims))
        self._fitted = HostCachedFlag(lambda t: (t.norm(dim=1) > 0.5).all())

    # ------------------------------------------------------------------ state
    @property
    def fitted(self) -> bool:
        """Every codebook row is a unit vector (read again only after the buffer changes)."""
        return self._fitted.get(self.codebook)

    def hparams(self) -> Dict[str, Union[int, float]]:
        """What a codebook depends on; written next to it and checked when loading."""
        return dict(num_tokens=self.vocab_size, patch_size=self.patch_size,
                    cell_size=self.cell_size, bins=self.bins,
                    flat_threshold=self.flat_threshold)

    def init_weights(self) -> None:
        super().init_weights()
        if self.checkpoint:
            self.load_codebook(self.checkpoint)

    def load_codebook(self, path: str) -> None:
        """Load a codebook file of tools/misc/fit_hog_tokenizer.py (read weights-only and
        checked by :mod:`mmbeit.checkpoint`); a file fitted with other settings is refused,
        naming them."""
        path = str(path)
        how = 'write one with python tools/misc/fit_hog_tokenizer.py CONFIG --out FILE'
        if not osp.isfile(path):
            raise CheckpointNotFoundError(f'HOGTokenizer: no codebook at {path}; {how}')
        ckpt = read_checkpoint(path)
        try:
            state = unwrap_state_dict(ckpt)[0]
        except CheckpointError as exc:
            raise CheckpointError(f'{path} is not a HOGTokenizer codebook ({exc}); {how}'
                                  ) from None
        meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
        saved = meta.get('hog_tokenizer') if isinstance(meta, dict) else None
        if saved is not None and saved != self.hparams():
            diff = {k: (saved.get(k), v) for k, v in self.hparams().items()
                    if saved.get(k) != v}
            raise ValueError(f'{path} was fitted with other settings; (file, config): {diff}. '
                             'Fit a codebook for this config or change the config to match.')
        load_state_dict_checked(
            self, state, source=path, target=f'HOGTokenizer ({self.vocab_size} tokens)',
            hint=f'A HOGTokenizer codebook file holds state_dict = {{codebook}} for these '
            f'settings; {how}')
        if not self.fitted:
            raise ValueError(f'{path}: the codebook has rows that are not unit vectors; {how}')

    def freeze(self) -> 'HOGTokenizer':
        """Target-generator mode (nothing trains: the codebook is a buffer)."""
        self.requires_grad_(False)
        return self.train(False)

    # ------------------------------------------------------------------ computation
    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Centred HOG [B, N, D] of images [B, 3, H, W] in [0, 1] (H, W = input_size)."""
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.input_size:
            raise ValueError(f'HOGTokenizer expects images [B, 3, {self.input_size[0]}, '
                             f'{self.input_size[1]}] in [0, 1], got {tuple(images.shape)}')
        with torch.autocast(device_type=images.device.type, enabled=False):
            h = patch_hog(images.float(), self.patch_size, self.cell_size, self.bins)
            return h - h.mean(-1, keepdim=True)

    def assign(self, desc: torch.Tensor) -> torch.Tensor:
        """Token ids of centred descriptors [..., D] (the rule of the module docstring)."""
        if not self.fitted:
            raise RuntimeError('HOGTokenizer has no codebook: write one with python '
                               'tools/misc/fit_hog_tokenizer.py CONFIG --out FILE and set '
                               'model.target_generator.checkpoint=FILE')
        with torch.autocast(device_type=desc.device.type, enabled=False):
            desc = desc.float()
            ids = (F.normalize(desc, dim=-1) @ self.codebook.float().t()).argmax(-1) + 1
            flat = desc.norm(dim=-1) < self.flat_threshold
        return torch.where(flat, torch.zeros_like(ids), ids)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids [B, N] (long) for RGB images in [0, 1]."""
        return self.assign(self.descriptors(images))

    @torch.no_grad()
    def fit(self, desc: torch.Tensor, iters: int = 30,
            generator: Optional[torch.Generator] = None) -> Dict[str, float]:
        """Fit the codebook on centred descriptors [M, D] (spherical k-means over the
        textured ones). Returns the fraction of flat descriptors and the usage of all
        ``num_tokens`` tokens on ``desc`` (``codebook_usage_stats``)."""
        desc = desc.reshape(-1, self.descriptor_dims).float()
        textured = desc[desc.norm(dim=-1) >= self.flat_threshold]
        k = self.vocab_size - 1
        if textured.shape[0] < k:
            raise ValueError(f'HOGTokenizer.fit: {textured.shape[0]} of {desc.shape[0]} '
                             f'patches are textured (centred HOG >= {self.flat_threshold}), '
                             f'fewer than the {k} centroids; give more images or use fewer '
                             'tokens')
        means, _ = spherical_kmeans(F.normalize(textured, dim=-1), k, iters=iters,
                                    generator=generator)
        self.codebook.copy_(means)
        counts = torch.bincount(self.assign(desc), minlength=self.vocab_size)
        stats = codebook_usage_stats(counts.float())
        stats['flat_fraction'] = 1 - textured.shape[0] / desc.shape[0]
        return stats
