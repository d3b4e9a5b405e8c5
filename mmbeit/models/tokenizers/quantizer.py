"""Normalised-EMA vector quantizer of VQ-KD (BEiT v2 paper section 2.2; unilm beit2
norm_ema_quantizer.py).

The codebook holds K unit vectors of dimension d (default 8192 x 32). For a batch of
features z [B, N, d]:

1. z is L2-normalised; each vector takes the nearest code. With unit vectors on both
   sides the squared distance ``|z|^2 + |e|^2 - 2 z.e`` orders codes like cosine
   similarity, so the argmax of ``z . e`` is used directly.
2. ``z_q = e[idx]``; the loss is the commitment term ``beta * mean((sg[z_q] - z)^2)``; the
   output is ``z + sg[z_q - z]`` (straight-through estimator).
3. In training the codebook moves by EMA, not by gradients: with n_k the number of
   vectors assigned to code k and s_k their sum, both all-reduced over ranks,
   ``e_k <- l2norm(decay * e_k + (1 - decay) * l2norm(s_k / n_k))`` for used codes;
   unused codes keep their vector. ``cluster_size`` is the EMA of n_k.
4. On the first training batch the codebook is initialised by spherical k-means
   (``kmeans_iters`` iterations). mmbeit runs it on rank 0 and broadcasts the result;
   unilm runs it on every rank's own batch, which leaves the ranks with different
   codebooks that only drift together through the shared EMA statistics.
5. Optional (off by default, as in the paper): codes whose ``cluster_size`` falls
   below ``dead_code_threshold`` are restarted from random encoder outputs of the
   current batch (chosen on rank 0 and broadcast), a known cure for the unused codes
   users report (unilm#1556).

State-dict keys follow the official VQ-KD checkpoint: ``embedding.weight`` [K, d],
``embedding.initted`` and ``cluster_size`` [K]. The official file also has
``embedding.cluster_size`` and ``embedding.embed_avg``, which its normalised-EMA
quantizer never reads; the load path drops them and says so (``note_dropped``: in the
load's report, or the log).

Everything here runs in fp32 with autocast disabled. The training forward reads nothing
back to the host per call, so a GPU step is not stalled by it: the k-means flag is read
once and then only when the ``initted`` buffer is written (``HostCachedFlag``), counts are
scatter-added (``torch.bincount`` on CUDA reads its maximum back), dead codes are replaced
with fixed-shape ``torch.where`` and ``num_restarted`` is a device counter.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import all_reduce, broadcast, is_main_process

from mmbeit.checkpoint import note_dropped

__all__ = ['NormEMAQuantizer', 'spherical_kmeans', 'codebook_usage_stats', 'HostCachedFlag']


class HostCachedFlag:
    """A Python bool computed from a tensor (``fn(tensor)``), recomputed only when the
    tensor was written in place (its version counter moved) or replaced since the last
    computation. Reading a device tensor on the host waits for the device, so a flag that
    changes once per run (a codebook initialised, a codebook loaded) costs one read per
    change instead of one per step."""

    def __init__(self, fn):
        self.fn = fn
        self._tensor = None
        self._version = None
        self._value = None

    @staticmethod
    def _version_of(tensor: torch.Tensor):
        try:
            return tensor._version
        except RuntimeError:  # inference tensors keep no version counter
            return None

    def get(self, tensor: torch.Tensor) -> bool:
        version = self._version_of(tensor)
        if version is None or tensor is not self._tensor or version != self._version:
            self.set(tensor, bool(self.fn(tensor)))
        return self._value

    def set(self, tensor: torch.Tensor, value: bool) -> None:
        """Record ``value`` as the flag of ``tensor`` as it is now (after writing it)."""
        self._tensor, self._version, self._value = tensor, self._version_of(tensor), value


def _count_ids(idx: torch.Tensor, num: int, dtype: torch.dtype) -> torch.Tensor:
    """Occurrences of each id in [0, num) among ``idx`` [M], as ``dtype`` [num]. A scatter-add:
    ``torch.bincount`` sizes its output from the input's maximum, a host read on CUDA."""
    out = torch.zeros(num, dtype=dtype, device=idx.device)
    return out.index_add_(0, idx, torch.ones(idx.shape, dtype=dtype, device=idx.device))


def spherical_kmeans(x: torch.Tensor, num_clusters: int, iters: int = 10,
                     generator: Optional[torch.Generator] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine k-means on unit vectors ``x`` [M, d].

    Initial means are ``num_clusters`` distinct rows (a random permutation), or rows
    drawn with replacement when M < num_clusters. Each iteration assigns every row to
    its most similar mean and replaces each mean with the L2-normalised average of its
    rows; a mean with no rows keeps its value. Returns (means [K, d], counts [K]) where
    counts are the sizes of the final assignment.
    """
    m = x.shape[0]
    if m >= num_clusters:
        idx = torch.randperm(m, generator=generator, device='cpu')[:num_clusters]
    else:
        idx = torch.randint(0, m, (num_clusters, ), generator=generator, device='cpu')
    means = x[idx.to(x.device)].clone()
    counts = torch.zeros(num_clusters, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        assign = (x @ means.t()).argmax(dim=1)  # [M]
        counts = torch.bincount(assign, minlength=num_clusters).to(x.dtype)
        sums = torch.zeros_like(means).index_add_(0, assign, x)  # [K, d]
        new = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=1)
        means = torch.where((counts > 0).unsqueeze(1), new, means)
    return means, counts


def codebook_usage_stats(counts: torch.Tensor) -> Dict[str, float]:
    """From per-code counts [K]: fraction of codes used at least once, perplexity
    ``exp(H(p))`` of the usage distribution (K when uniform, 1 when one code takes
    everything) and the number of unused codes."""
    counts = counts.double()
    total = counts.sum()
    used = int((counts > 0).sum())
    if total <= 0:
        return dict(usage=0.0, perplexity=0.0, unused=counts.numel())
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return dict(usage=used / counts.numel(), perplexity=float(entropy.exp()),
                unused=counts.numel() - used)


class _Codebook(nn.Module):
    """Holds the codebook so its keys read ``embedding.weight`` / ``embedding.initted``
    as in the official checkpoint. Buffers, not parameters: no optimiser sees them."""

    def __init__(self, num_tokens: int, embed_dims: int, initted: bool):
        super().__init__()
        self.register_buffer('weight', F.normalize(torch.randn(num_tokens, embed_dims), dim=1))
        self.register_buffer('initted', torch.tensor([float(initted)]))


class NormEMAQuantizer(nn.Module):
    """Normalised-EMA vector quantizer (see the module docstring).

    Args:
        num_tokens (int): codebook size K. embed_dims (int): code dimension d.
        beta (float): commitment-loss weight. decay (float): EMA decay.
        kmeans_init (bool): initialise by k-means on the first training batch.
        kmeans_iters (int): k-means iterations.
        dead_code_threshold (float): restart codes whose EMA count is below this;
            0 disables restarts (the paper's behaviour).
    """

    def __init__(self, num_tokens: int = 8192, embed_dims: int = 32, beta: float = 1.0,
                 decay: float = 0.99, kmeans_init: bool = True, kmeans_iters: int = 10,
                 dead_code_threshold: float = 0.0):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'decay must be in [0, 1), got {decay}')
        if dead_code_threshold < 0:
            raise ValueError(f'dead_code_threshold must be >= 0, got {dead_code_threshold}')
        self.num_tokens = num_tokens
        self.embed_dims = embed_dims
        self.beta = beta
        self.decay = decay
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.embedding = _Codebook(num_tokens, embed_dims, initted=not kmeans_init)
        self.register_buffer('cluster_size', torch.zeros(num_tokens))
        # Counts since the last pop_usage_counts() (read by CodebookUsageHook).
        self.register_buffer('usage_counts', torch.zeros(num_tokens, dtype=torch.float64),
                             persistent=False)
        # Codes restarted so far (a device counter: counting them on the host would sync).
        self.register_buffer('num_restarted', torch.zeros((), dtype=torch.long),
                             persistent=False)
        self._initted = HostCachedFlag(lambda t: t.item() != 0)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def extra_repr(self) -> str:
        return (f'num_tokens={self.num_tokens}, embed_dims={self.embed_dims}, beta={self.beta}, '
                f'decay={self.decay}, kmeans_init={self.kmeans_init}, '
                f'dead_code_threshold={self.dead_code_threshold}')

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # Official VQ-KD files carry two statistics the normalised-EMA rule never reads.
        unread = [prefix + name for name in ('embedding.cluster_size', 'embedding.embed_avg')
                  if state_dict.pop(prefix + name, None) is not None]
        if unread:
            note_dropped(', '.join(unread), 'statistics of the official VQ-KD file that the '
                         'normalised-EMA update never reads')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ pieces
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest code for unit vectors z [M, d] (cosine similarity)."""
        return (z @ self.embedding.weight.t()).argmax(dim=1)

    @torch.no_grad()
    def _kmeans_init_(self, z: torch.Tensor) -> None:
        means = torch.empty_like(self.embedding.weight)
        counts = torch.zeros_like(self.cluster_size)
        if is_main_process():
            means, counts = spherical_kmeans(z, self.num_tokens, self.kmeans_iters)
        broadcast(means)
        broadcast(counts)
        self.embedding.weight.copy_(means)
        self.cluster_size.copy_(counts)
        self.embedding.initted.fill_(1.0)
        self._initted.set(self.embedding.initted, True)

    @torch.no_grad()
    def _ema_update_(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        counts = _count_ids(idx, self.num_tokens, z.dtype)  # [K]
        sums = torch.zeros_like(self.embedding.weight).index_add_(0, idx, z)  # [K, d]
        all_reduce(counts)
        all_reduce(sums)
        self.usage_counts.add_(counts.to(self.usage_counts.dtype))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        means = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=1)
        target = torch.where((counts > 0).unsqueeze(1), means, self.embedding.weight)
        self.embedding.weight.copy_(
            F.normalize(self.decay * self.embedding.weight + (1 - self.decay) * target, dim=1))
        if self.dead_code_threshold > 0:
            self._restart_dead_codes_(z)

    @torch.no_grad()
    def _restart_dead_codes_(self, z: torch.Tensor) -> None:
        """Codes with ``cluster_size`` below the threshold take rows of rank 0's batch
        ``z`` [M, d]: the i-th dead code (in code order) takes the i-th of K rows drawn
        there (distinct rows when M >= K, else drawn with replacement), broadcast to all
        ranks. Fixed shapes throughout, so nothing is read back to the host."""
        # cluster_size is identical on all ranks (all-reduced counts), so is `dead`.
        dead = self.cluster_size < self.dead_code_threshold  # [K]
        m, k = z.shape[0], self.num_tokens
        new = torch.empty(k, self.embed_dims, device=z.device, dtype=z.dtype)
        if is_main_process():
            rows = (torch.randperm(m, device=z.device)[:k] if m >= k else
                    torch.randint(0, m, (k, ), device=z.device))
            rank = (torch.cumsum(dead, 0) - 1).clamp(min=0)  # [K] index among dead codes
            new = z[rows[rank]]  # [K, d]: dead code i gets the row drawn i-th
        broadcast(new)
        self.embedding.weight.copy_(torch.where(dead.unsqueeze(1), new, self.embedding.weight))
        # A restarted code gets the threshold as its count, so it has one EMA step's
        # grace before it can be restarted again.
        self.cluster_size.masked_fill_(dead, self.dead_code_threshold)
        self.num_restarted.add_(dead.sum())

    def pop_usage_counts(self) -> torch.Tensor:
        """Per-code counts accumulated by training forwards since the last call
        (summed over ranks), then reset to zero."""
        counts = self.usage_counts.clone()
        self.usage_counts.zero_()
        return counts

    # ------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B, N, d] (any float dtype) -> (z_q [B, N, d] fp32 straight-through,
        commitment loss (scalar), token ids [B, N] long)."""
        if z.shape[-1] != self.embed_dims:
            raise ValueError(f'{type(self).__name__} expects features with last dimension '
                             f'{self.embed_dims}, got shape {tuple(z.shape)}')
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            flat = z.reshape(-1, self.embed_dims)  # [B*N, d]
            if self.training and not self._initted.get(self.embedding.initted):
                self._kmeans_init_(flat.detach())
            idx = self.nearest(flat.detach())  # [B*N]
            z_q = self.embedding.weight[idx].view_as(z)
            loss = self.beta * F.mse_loss(z_q.detach(), z)
            if self.training:
                self._ema_update_(flat.detach(), idx)
            z_q = z + (z_q - z).detach()
        return z_q, loss, idx.view(z.shape[:-1])
