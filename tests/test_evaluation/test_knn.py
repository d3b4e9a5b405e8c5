"""Tests for mmbeit/evaluation/knn.py: DINO's weighted kNN (Caron et al. 2021, section 4.1)
against a direct python-loop computation, top-k counting with ties, feature extraction
from BEiTViT-like backbones, and the exact errors of bad inputs."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from _helpers import randomize_, tiny

from mmbeit.evaluation import extract_features, knn_scores, topk_correct

pytestmark = pytest.mark.usefixtures('one_thread')


def direct_scores(bank, labels, queries, num_classes, k, temperature):
    """The protocol written out with python loops: cosine similarity to every bank row,
    the k most similar, weights exp(sim / T) summed per class, shares of the total."""
    bank, queries = np.asarray(bank, np.float64), np.asarray(queries, np.float64)
    out = []
    for q in queries:
        sims = [float(q @ b / (np.linalg.norm(q) * np.linalg.norm(b))) for b in bank]
        nearest = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[int(labels[i])] += math.exp(sims[i] / temperature)
        out.append([v / sum(votes) for v in votes])
    return torch.tensor(out, dtype=torch.float32)


def toy(seed=0, n=40, q=13, d=6, c=5):
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).add(0.5)
    labels = torch.randint(0, c, (n,), generator=g)
    labels[:c] = torch.arange(c)  # every class present
    return bank, labels, torch.randn(q, d, generator=g), c


@pytest.mark.parametrize('k,temperature', [(1, 0.07), (7, 0.07), (7, 0.5), (20, 0.07)])
def test_scores_equal_direct_computation(k, temperature):
    bank, labels, queries, c = toy()
    got = knn_scores(bank, labels, queries, c, k=k, temperature=temperature)
    want = direct_scores(bank, labels, queries, c, k, temperature)
    assert got.shape == (13, c) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # each query's non-zero classes are those of its k neighbours
    assert int((got > 0).sum(dim=1).max()) <= k


def test_weights_decide_against_the_majority():
    """One bank point close to the query (class 0) and two farther ones (class 1): at a
    low temperature the close one outweighs the two, at a high one the majority wins."""
    bank = torch.tensor([[1.0, 0.1], [0.6, 1.0], [0.5, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.0]])
    sims = torch.nn.functional.normalize(bank, dim=1) @ torch.tensor([1.0, 0.0])
    for temperature in (0.07, 10.0):
        w = torch.exp(sims[:3] / temperature)
        expected = torch.tensor([[w[0], w[1] + w[2], 0.0]]) / w.sum()
        got = knn_scores(bank, labels, query, 3, k=3, temperature=temperature)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert knn_scores(bank, labels, query, 3, k=3, temperature=0.07).argmax() == 0
    assert knn_scores(bank, labels, query, 3, k=3, temperature=10.0).argmax() == 1


def test_k_is_clipped_to_the_bank_and_chunking_changes_nothing():
    bank, labels, queries, c = toy(seed=1)
    # T = 1: the farthest of the 40 neighbours still weighs (at 0.07 it would not)
    full = knn_scores(bank, labels, queries, c, k=40, temperature=1.)
    assert torch.equal(knn_scores(bank, labels, queries, c, k=1000, temperature=1.), full)
    torch.testing.assert_close(full, direct_scores(bank, labels, queries, c, 40, 1.),
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full, direct_scores(bank, labels, queries, c, 39, 1.),
                              atol=1e-3)
    base = knn_scores(bank, labels, queries, c, k=5)
    for chunk in (1, 2, 5, 13, 14):  # a matrix product of another shape may round otherwise
        got = knn_scores(bank, labels, queries, c, k=5, chunk_size=chunk)
        torch.testing.assert_close(got, base, rtol=0, atol=1e-6)
        assert torch.equal((got > 0), (base > 0))  # the same neighbours


def test_cosine_scale_invariance_tiny_temperature_and_empty_queries():
    bank, labels, queries, c = toy(seed=2)
    scaled = bank * torch.arange(1, 41, dtype=torch.float32)[:, None]
    torch.testing.assert_close(knn_scores(scaled, labels, queries * 3, c),
                               knn_scores(bank, labels, queries, c), rtol=1e-5, atol=1e-6)
    # exp(1 / 1e-4) overflows float32; the shares stay finite and the nearest one wins
    tiny_t = knn_scores(bank, labels, queries, c, k=10, temperature=1e-4)
    assert torch.isfinite(tiny_t).all()
    nearest = labels[(torch.nn.functional.normalize(queries, dim=1)
                      @ torch.nn.functional.normalize(bank, dim=1).t()).argmax(dim=1)]
    assert torch.equal(tiny_t.argmax(dim=1), nearest)
    torch.testing.assert_close(tiny_t.sum(dim=1), torch.ones(13))
    assert knn_scores(bank, labels, queries[:0], c).shape == (0, c)
    # double bank / labels of another integer dtype are accepted
    torch.testing.assert_close(knn_scores(bank.double(), labels.int(), queries, c),
                               knn_scores(bank, labels, queries, c))


def test_topk_correct_counts_and_ties():
    scores = torch.tensor([[0.1, 0.7, 0.2],    # label 1: top-1
                           [0.5, 0.5, 0.0],    # label 1: tie goes to class 0 -> top-2
                           [0.4, 0.4, 0.2],    # label 0: tie won -> top-1
                           [0.3, 0.3, 0.4],    # label 1: behind 2 and (tie) 0 -> top-3
                           [0.6, 0.3, 0.1]])   # label 2: top-3
    labels = torch.tensor([1, 1, 0, 1, 2])
    assert topk_correct(scores, labels, (1, 2, 3, 5)) == {1: 2, 2: 3, 3: 5, 5: 5}
    assert topk_correct(scores, labels, 2) == {2: 3}
    assert topk_correct(scores[:0], labels[:0]) == {1: 0, 5: 0}
    counts = topk_correct(scores, labels)
    assert all(type(v) is int for v in counts.values())


@pytest.mark.parametrize('call,message', [
    (lambda b, y, q: knn_scores(b[0], y, q, 5),
     'bank_feats must be a 2-D tensor [rows, feature_dim], got [6]'),
    (lambda b, y, q: knn_scores(b, y, q[:, :4], 5),
     'bank_feats and query_feats must have the same feature dim, got 6 and 4: extract both '
     'with the same backbone, layer and feature'),
    (lambda b, y, q: knn_scores(b, y[:-1], q, 5),
     'bank_labels must be a 1-D tensor of 40 class indices (one per feature row), got [39]'),
    (lambda b, y, q: knn_scores(b, y.float(), q, 5),
     'bank_labels must hold integer class indices, got dtype torch.float32; convert with '
     '.long()'),
    (lambda b, y, q: knn_scores(b, y, q, 4),
     'bank_labels must lie in [0, num_classes=4), got values in [0, 4]; pass the number of '
     'classes of the whole label set as num_classes'),
    (lambda b, y, q: knn_scores(b, y, q, 5, k=0), 'k must be an integer >= 1, got 0'),
    (lambda b, y, q: knn_scores(b, y, q, 5, k=2.0), 'k must be an integer >= 1, got 2.0'),
    (lambda b, y, q: knn_scores(b, y, q, 5, temperature=0),
     'temperature must be a finite number > 0, got 0'),
    (lambda b, y, q: knn_scores(b, y, q, 5, temperature=float('inf')),
     'temperature must be a finite number > 0, got inf'),
    (lambda b, y, q: knn_scores(b, y, q, 5, chunk_size=0),
     'chunk_size must be an integer >= 1, got 0'),
    (lambda b, y, q: knn_scores(b[:0], y[:0], q, 5),
     'the memory bank is empty (bank_feats has 0 rows): kNN needs at least one labelled '
     'bank feature'),
    (lambda b, y, q: topk_correct(torch.zeros(3, 2), torch.tensor([0, 2, 1])),
     'labels must lie in [0, num_classes=2), got values in [0, 2]; pass the number of '
     'classes of the whole label set as num_classes'),
    (lambda b, y, q: topk_correct(torch.zeros(3, 2), torch.tensor([0, 1, 1]), (1, 0)),
     'each topk value must be an integer >= 1, got 0'),
    (lambda b, y, q: topk_correct(torch.zeros(3), torch.tensor([0, 1, 1])),
     'scores must be a 2-D tensor [queries, classes], got [3]'),
])
def test_errors(call, message):
    bank, labels, queries, _ = toy()
    with pytest.raises(ValueError, match=f'^{re.escape(message)}$'):
        call(bank, labels, queries)


class FakeBackbone:
    """forward_layers returns known token states; ``norm`` doubles its input."""
    num_layers = 3

    def __init__(self, norm=True):
        self.norm = (lambda t: 2 * t) if norm else None
        self.calls = []

    def forward_layers(self, x, layers):
        self.calls.append(list(layers))
        b = x.shape[0]
        # layer i: cls token = i + 1, patch tokens 0..3 times (i + 1)
        return [torch.cat([torch.full((b, 1, 2), i + 1.),
                           (i + 1.) * torch.arange(4.).view(1, 4, 1).expand(b, 4, 2)], 1)
                for i in layers]


def test_extract_features_on_known_tokens():
    x = torch.zeros(2, 3, 8, 8)
    bb = FakeBackbone()
    cls0, cls_last, cls_last_pos = extract_features(bb, x, 'cls', (0, -1, 2))
    assert bb.calls == [[0, -1, 2]]
    assert torch.equal(cls0, torch.ones(2, 2))             # raw
    assert torch.equal(cls_last, torch.full((2, 2), 0.))   # token of "layer -1" = 0, x2
    assert torch.equal(cls_last_pos, torch.full((2, 2), 6.))  # (2 + 1) * 2: last block normed
    (avg,) = extract_features(bb, x, 'avg', (1,))
    assert torch.equal(avg, torch.full((2, 2), 3.))        # mean(0, 2, 4, 6), not normed
    (both,) = extract_features(FakeBackbone(norm=False), x, 'cls_and_avg', (2,))
    assert torch.equal(both, torch.tensor([[3., 3., 4.5, 4.5]] * 2))


def test_extract_features_equal_the_backbones_own_outputs():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    vit = randomize_(tiny(final_norm=True, out_type='cls_token')).eval()
    raw = randomize_(tiny(final_norm=False, out_type='raw', out_indices=(0, 1))).eval()
    cls, = extract_features(vit, x, 'cls')
    torch.testing.assert_close(cls, vit(x)[0], rtol=0, atol=1e-6)
    assert not cls.requires_grad
    tokens = raw(x)
    avg0, avg1 = extract_features(raw, x, 'avg', (0, -1))
    torch.testing.assert_close(avg0, tokens[0][:, 1:].mean(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(avg1, tokens[1][:, 1:].mean(dim=1), rtol=0, atol=1e-6)
    # a classifier's mean pooling: the last block's mean patch token through fc_norm
    pooled = randomize_(tiny(final_norm=False, out_type='avg_featmap')).eval()
    assert pooled.fc_norm is not None
    avg, both = (extract_features(pooled, x, f)[0] for f in ('avg', 'cls_and_avg'))
    torch.testing.assert_close(avg, pooled(x)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both[:, avg.shape[1]:], avg, rtol=0, atol=0)


def test_extract_features_errors():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(TypeError, match=re.escape(
            'Linear has no forward_layers(x, layers): kNN features need a ViT backbone like '
            'mmbeit BEiTViT (pass model.backbone, not the whole model)')):
        extract_features(nn.Linear(2, 2), x)
    with pytest.raises(ValueError, match=re.escape(
            "feature must be one of ('cls', 'avg', 'cls_and_avg'), got 'max'")):
        extract_features(FakeBackbone(), x, 'max')
    with pytest.raises(ValueError, match=re.escape(
            'images must be a 4-D tensor [B, C, H, W], got [3, 8, 8]')):
        extract_features(FakeBackbone(), x[0])
