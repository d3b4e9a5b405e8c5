"""Weighted k-nearest-neighbour classification of frozen features.

The protocol is the one DINO uses to judge self-supervised features (Caron et al. 2021,
"Emerging Properties in Self-Supervised Vision Transformers", section 4.1 and its
``eval_knn.py``): features of a labelled memory bank and of query images are L2-normalised,
each query takes the ``k`` bank entries of highest cosine similarity ``s``, every neighbour
votes for its class with weight ``exp(s / T)`` and the predicted class is the one with the
largest summed weight. DINO uses k = 20 and T = 0.07.

``knn_scores`` returns each query's vote *shares*: the summed weights per class divided by
the query's total weight (rows sum to 1). Dividing a row by a positive number does not
change its ranking, so predictions equal DINO's; the shares stay finite for any ``T`` (the
weights are computed relative to the query's nearest neighbour, ``exp((s - s_max) / T)``).

Nothing here imports ``mmbeit.models`` (docs/architecture.md: evaluation and models share a
layer): :func:`extract_features` only needs an object with ``forward_layers`` like
``BEiTViT``.
"""
import math
import numbers
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

__all__ = ['knn_scores', 'topk_correct', 'extract_features', 'FEATURES', 'FEATURE_NAMES']

#: what :func:`extract_features` can return per layer
FEATURES = ('cls', 'avg', 'cls_and_avg')
#: how logs and tables name each feature
FEATURE_NAMES = {'cls': 'cls token', 'avg': 'mean patch token',
                 'cls_and_avg': 'cls token + mean patch token'}


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def _check_labels(name: str, labels: torch.Tensor, length: int, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() != length:
        shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
        raise ValueError(f'{name} must be a 1-D tensor of {length} class indices (one per '
                         f'feature row), got {shape}')
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f'{name} must hold integer class indices, got dtype {labels.dtype}; '
                         'convert with .long()')
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f'{name} must lie in [0, num_classes={num_classes}), got values in '
                         f'[{int(labels.min())}, {int(labels.max())}]; pass the number of '
                         'classes of the whole label set as num_classes')


def knn_scores(bank_feats: torch.Tensor, bank_labels: torch.Tensor, query_feats: torch.Tensor,
               num_classes: int, k: int = 20, temperature: float = 0.07,
               chunk_size: int = 1024) -> torch.Tensor:
    """Weighted-kNN class scores of ``query_feats`` against a labelled bank.

    Args:
        bank_feats (Tensor): [N, D] memory-bank features (any scale: rows are normalised).
        bank_labels (Tensor): [N] integer classes in ``[0, num_classes)``.
        query_feats (Tensor): [Q, D] query features (Q may be 0).
        num_classes (int): C, the number of classes.
        k (int): neighbours per query; clipped to N when the bank is smaller.
        temperature (float): T > 0 of the weights ``exp(cos / T)``.
        chunk_size (int): queries compared at once; memory is about
            ``chunk_size * N`` floats. The result does not depend on it beyond float
            rounding (the matrix product may sum in another order for another shape).

    Returns:
        Tensor: [Q, C] float32 vote shares on the bank's device; each row sums to 1 and its
        argmax is DINO's prediction.
    """
    for name, t in (('bank_feats', bank_feats), ('query_feats', query_feats)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t)
            raise ValueError(f'{name} must be a 2-D tensor [rows, feature_dim], got {shape}')
    if bank_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(f'bank_feats and query_feats must have the same feature dim, got '
                         f'{bank_feats.shape[1]} and {query_feats.shape[1]}: extract both '
                         'with the same backbone, layer and feature')
    num_classes = _check_int('num_classes', num_classes, 1)
    k = _check_int('k', k, 1)
    chunk_size = _check_int('chunk_size', chunk_size, 1)
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f'temperature must be a finite number > 0, got {temperature!r}')
    if bank_feats.shape[0] == 0:
        raise ValueError('the memory bank is empty (bank_feats has 0 rows): kNN needs at '
                         'least one labelled bank feature')
    _check_labels('bank_labels', bank_labels, bank_feats.shape[0], num_classes)

    device = bank_feats.device
    bank = F.normalize(bank_feats.float(), dim=1)  # [N, D]
    labels = bank_labels.to(device=device, dtype=torch.long)
    queries = F.normalize(query_feats.float().to(device), dim=1)  # [Q, D]
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        sim = queries[start:start + chunk_size] @ bank.t()  # [c, N]
        top_sim, top_idx = sim.topk(k, dim=1)  # [c, k], descending
        weights = torch.exp((top_sim - top_sim[:, :1]) / temperature)  # nearest has 1
        votes = torch.zeros(sim.shape[0], num_classes, device=device)
        votes.scatter_add_(1, labels[top_idx], weights)  # [c, C]
        out.append(votes / votes.sum(dim=1, keepdim=True))
    if not out:
        return torch.zeros(0, num_classes, device=device)
    return torch.cat(out)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor,
                 topk: Sequence[int] = (1, 5)) -> Dict[int, int]:
    """Number of rows whose true label is among the ``t`` highest scores, for each ``t``.

    Ties between classes go to the lower class index (a stable descending sort), so the
    counts are reproducible. ``t`` larger than the number of classes counts every row.

    Args:
        scores (Tensor): [Q, C] scores (e.g. from :func:`knn_scores`).
        labels (Tensor): [Q] integer true classes in ``[0, C)``.
        topk (Sequence[int]): the ``t`` values, each >= 1.

    Returns:
        dict: ``{t: number of correct rows}`` as Python ints.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores)
        raise ValueError(f'scores must be a 2-D tensor [queries, classes], got {shape}')
    if isinstance(topk, numbers.Integral):
        topk = (topk,)
    topk = [_check_int('each topk value', t, 1) for t in topk]
    if not topk:
        raise ValueError('topk must name at least one value, e.g. (1, 5)')
    num_classes = scores.shape[1]
    _check_labels('labels', labels, scores.shape[0], max(num_classes, 1))
    if scores.shape[0] == 0:
        return {t: 0 for t in topk}
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [Q, C]
    hit = order == labels.to(order.device).long()[:, None]  # [Q, C], one True per row
    return {t: int(hit[:, :min(t, num_classes)].sum()) for t in topk}


def extract_features(backbone, images: torch.Tensor, feature: str = 'cls',
                     layers: Sequence[int] = (-1,)) -> List[torch.Tensor]:
    """Per-image features of ``images`` at the blocks ``layers``, without gradients.

    ``backbone`` is duck-typed on mmbeit's ``BEiTViT``: ``backbone.forward_layers(x,
    layers)`` returns one [B, N+1, D] token tensor (cls token first) per requested block,
    before any final norm. The last block (index -1 or ``num_layers - 1``) gets the
    backbone's ``norm`` when it has one (pretraining backbones do), and its mean patch
    token the pooling norm ``fc_norm`` when it has one (classifiers with mean pooling), as
    its regular forward does; other blocks stay raw. The caller chooses train / eval mode
    and normalises the images.

    Args:
        backbone: object with ``forward_layers`` (and optionally ``norm``, ``num_layers``).
        images (Tensor): [B, 3, H, W] float images, already normalised.
        feature (str): 'cls' (cls token, [B, D]), 'avg' (mean of the patch tokens, [B, D])
            or 'cls_and_avg' (both concatenated, [B, 2D]).
        layers (Sequence[int]): block indices (0-based, negative from the end).

    Returns:
        list[Tensor]: one float32 [B, D] (or [B, 2D]) tensor per entry of ``layers``.
    """
    if feature not in FEATURES:
        raise ValueError(f'feature must be one of {FEATURES}, got {feature!r}')
    forward_layers = getattr(backbone, 'forward_layers', None)
    if not callable(forward_layers):
        raise TypeError(f'{type(backbone).__name__} has no forward_layers(x, layers): kNN '
                        'features need a ViT backbone like mmbeit BEiTViT (pass '
                        'model.backbone, not the whole model)')
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f'images must be a 4-D tensor [B, C, H, W], got {shape}')
    if isinstance(layers, numbers.Integral):
        layers = (layers,)
    layers = [int(i) for i in layers]
    if not layers:
        raise ValueError('layers must name at least one block, e.g. (-1,)')
    num_layers = getattr(backbone, 'num_layers', None)
    norm = getattr(backbone, 'norm', None)
    fc_norm = getattr(backbone, 'fc_norm', None)
    with torch.no_grad():
        states = forward_layers(images, layers)
        if len(states) != len(layers):
            raise RuntimeError(f'{type(backbone).__name__}.forward_layers returned '
                               f'{len(states)} tensors for {len(layers)} layers')
        feats = []
        for i, tokens in zip(layers, states):
            if tokens.dim() != 3 or tokens.shape[1] < 2:
                raise RuntimeError(f'forward_layers must return [B, N+1, D] token states '
                                   f'(cls token and patches), got {list(tokens.shape)}')
            is_last = i == -1 or (num_layers is not None and i == num_layers - 1)
            if is_last and norm is not None:
                tokens = norm(tokens)
            cls, avg = tokens[:, 0], tokens[:, 1:].mean(dim=1)
            if is_last and fc_norm is not None:
                avg = fc_norm(avg)
            out = {'cls': cls, 'avg': avg}.get(feature)
            if out is None:
                out = torch.cat([cls, avg], dim=1)
            feats.append(out.float())
    return feats
