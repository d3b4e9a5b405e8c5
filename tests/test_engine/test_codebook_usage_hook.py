"""Tests for mmbeit/engine/hooks/codebook_usage.py (CodebookUsageHook, VQ-KD training).

A minimal runner (a model and a real mmengine MessageHub) drives the hook; the quantizer's
codebook is the identity, so which code each input takes is known in advance, and the
expected usage / perplexity over the sliding window are computed here from the token ids
the quantizer returned."""
import math
from collections import Counter

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MessageHub

from mmbeit.engine.hooks import CodebookUsageHook
from mmbeit.models.tokenizers.quantizer import NormEMAQuantizer, codebook_usage_stats
from mmbeit.registry import HOOKS

K = 8


# One intra-op thread (tests/conftest.py): tiny ops run faster so, also on a busy machine.
pytestmark = pytest.mark.usefixtures('one_thread')


class Runner:
    """What the hook uses of mmengine's Runner: ``model`` and ``message_hub``."""
    _count = 0

    def __init__(self, model):
        Runner._count += 1
        self.model = model
        self.message_hub = MessageHub(f'codebook_usage_test_{Runner._count}')

    def scalar(self, name):
        return self.message_hub.get_scalar(name).current()


def identity_quantizer(**kw):
    q = NormEMAQuantizer(num_tokens=K, embed_dims=K, decay=0.5, kmeans_init=False, **kw)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.eye(K))
    return q.train()


def batch_for(codes):
    """Inputs [1, len(codes), K] whose nearest codes (identity codebook) are ``codes``;
    the rows have various lengths, which the quantizer normalises away."""
    rows = torch.zeros(len(codes), K)
    for i, c in enumerate(codes):
        rows[i, c] = 1.0 + i
        rows[i, (c + 1) % K] = 0.1
    return rows.unsqueeze(0)


def expected_stats(counter):
    """usage and perplexity written out from a Counter of token ids."""
    total = sum(counter.values())
    entropy = -sum(n / total * math.log(n / total) for n in counter.values() if n)
    return sum(1 for n in counter.values() if n) / K, math.exp(entropy)


def test_sliding_window_values():
    model = nn.Module()
    model.quantize = identity_quantizer()
    runner = Runner(model)
    hook = CodebookUsageHook(window=3)

    model.quantize(batch_for([0, 0, 1, 2, 3]))  # before training: not counted
    hook.before_train(runner)
    per_iter = []
    for it in range(7):
        codes = [it % K] * (it + 1) + [(it + 1) % K]
        _, _, ids = model.quantize(batch_for(codes))
        assert ids[0].tolist() == codes
        counter = Counter(ids.flatten().tolist())
        if it == 4:  # two forwards in one iteration (gradient accumulation) add up
            _, _, ids = model.quantize(batch_for([7, 7]))
            counter.update(ids.flatten().tolist())
        if it == 5:  # an eval forward in between is not counted
            model.quantize.eval()(batch_for([6, 6, 6]))
            model.quantize.train()
        per_iter.append(counter)
        hook.after_train_iter(runner, batch_idx=it)

        window = sum(per_iter[-3:], Counter())
        usage, perplexity = expected_stats(window)
        assert runner.scalar('train/codebook_usage') == pytest.approx(usage, rel=1e-12)
        assert runner.scalar('train/codebook_perplexity') == pytest.approx(perplexity,
                                                                           rel=1e-9)
        full = torch.zeros(K)
        for code, n in window.items():
            full[code] = n
        stats = codebook_usage_stats(full)
        assert runner.scalar('train/codebook_usage') == pytest.approx(stats['usage'])
        assert runner.scalar('train/codebook_perplexity') == pytest.approx(
            stats['perplexity'])

    # Written out for the last iteration (6): iterations 4, 5, 6 hold
    # code 4 x5, 5 x1, 7 x2 | 5 x6, 6 x1 | 6 x7, 7 x1 -> 4:5, 5:7, 6:8, 7:3 (23 in all).
    assert runner.scalar('train/codebook_usage') == 0.5
    p = [5 / 23, 7 / 23, 8 / 23, 3 / 23]
    assert runner.scalar('train/codebook_perplexity') == pytest.approx(
        math.exp(-sum(x * math.log(x) for x in p)))
    assert 'train/codebook_restarted' not in runner.message_hub.log_scalars


def test_window_of_one_and_several_quantizers_and_restarts():
    model = nn.Module()
    model.enc = nn.Module()
    model.enc.q = identity_quantizer()
    model.q2 = identity_quantizer(dead_code_threshold=0.1)
    runner = Runner(model)
    hook = HOOKS.build(dict(type='CodebookUsageHook', window=1))
    hook.before_train(runner)
    model.enc.q(batch_for([1, 2, 3, 4]))
    model.q2(batch_for([0, 0, 0, 0]))
    hook.after_train_iter(runner, batch_idx=0)
    assert runner.scalar('train/codebook_usage_enc.q') == 0.5
    assert runner.scalar('train/codebook_perplexity_enc.q') == pytest.approx(4.0)
    assert runner.scalar('train/codebook_usage_q2') == 1 / K
    assert runner.scalar('train/codebook_perplexity_q2') == pytest.approx(1.0)
    # q2: codes 1-7 have cluster_size 0 < 0.1 and were restarted.
    assert model.q2.num_restarted == 7
    assert runner.scalar('train/codebook_restarted_q2') == 7.0
    assert 'train/codebook_restarted_enc.q' not in runner.message_hub.log_scalars

    model.enc.q(batch_for([6]))
    hook.after_train_iter(runner, batch_idx=1)  # q2 ran no forward this iteration
    assert runner.scalar('train/codebook_usage_enc.q') == 1 / K  # window 1: only code 6
    assert runner.scalar('train/codebook_usage_q2') == 0.0
    assert runner.scalar('train/codebook_perplexity_q2') == 0.0


def test_model_without_quantizer_and_bad_window():
    hook = CodebookUsageHook()
    with pytest.raises(RuntimeError) as err:
        hook.before_train(Runner(nn.Linear(2, 2)))
    assert str(err.value) == ('CodebookUsageHook: Linear has no NormEMAQuantizer; remove '
                              'the hook from custom_hooks')
    with pytest.raises(ValueError, match=r'^CodebookUsageHook: window must be >= 1, got 0$'):
        CodebookUsageHook(window=0)
