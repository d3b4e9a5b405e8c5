"""Tests for mmbeit/models/tokenizers/quantizer.py: the normalised-EMA vector quantizer of
VQ-KD (BEiT v2, unilm modeling_vqkd.py), its spherical k-means init, usage statistics, optional
dead-code restarts and the all-reduce of its statistics over 2 real CPU ranks (gloo).

Expected values are worked out by hand or by straightforward re-implementations written
here (loops over codes), never by calling the code under test."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import ROOT, free_port

from mmbeit.checkpoint import load_state_dict_checked
from mmbeit.models.tokenizers import quantizer as quantizer_mod
from mmbeit.models.tokenizers.quantizer import (
    NormEMAQuantizer,
    codebook_usage_stats,
    spherical_kmeans,
)

# One intra-op thread (tests/conftest.py): tiny ops run faster so, also on a busy machine.
pytestmark = pytest.mark.usefixtures('one_thread')


def make_quantizer(codebook, **kw):
    """A quantizer whose codebook is exactly ``codebook`` [K, d] (no k-means)."""
    codebook = torch.as_tensor(codebook, dtype=torch.float32)
    kw.setdefault('kmeans_init', False)
    q = NormEMAQuantizer(num_tokens=codebook.shape[0], embed_dims=codebook.shape[1], **kw)
    with torch.no_grad():
        q.embedding.weight.copy_(codebook)
    return q


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def reference_kmeans(x, init_rows, iters):
    """Spherical k-means written out per code: assign by cosine similarity, a code's new
    mean is the normalised average of its rows, an empty code keeps its mean."""
    means = x[init_rows].clone()
    counts = torch.zeros(len(init_rows))
    for _ in range(iters):
        assign = (x @ means.t()).argmax(1)
        for k in range(len(means)):
            members = x[assign == k]
            counts[k] = len(members)
            if len(members):
                means[k] = members.mean(0) / members.mean(0).norm()
    return means, counts


def reference_ema(codebook, x, decay):
    """One normalised-EMA step on unit rows x [M, d], per code: (new codebook, counts)."""
    assign = (x @ codebook.t()).argmax(1)
    new = codebook.clone()
    counts = torch.zeros(codebook.shape[0])
    for k in range(codebook.shape[0]):
        members = x[assign == k]
        counts[k] = len(members)
        if len(members):
            target = members.sum(0) / len(members)
            target = target / target.norm()
            moved = decay * codebook[k] + (1 - decay) * target
            new[k] = moved / moved.norm()
    return new, counts


# ---------------------------------------------------------------------------------------
# 1. nearest code
# ---------------------------------------------------------------------------------------
CODES3 = unit([1., 0.], [0., 1.], [-1., -1.])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_nearest_code_by_direction_whatever_the_norm(dtype):
    q = make_quantizer(CODES3).eval()
    # (5, 0.1): almost e0, long; (0.01, 0.02): short, nearer e1 (cos .89 vs .45);
    # (-3, -2.5): e2; (0.2, -0.1): e0 (e1 and e2 have negative cosine);
    # (-100, 20): cos with e0 -.98, e1 .20, e2 .55 -> e2.
    z = torch.tensor([[[5., 0.1], [0.01, 0.02], [-3., -2.5]],
                      [[0.2, -0.1], [-100., 20.], [0., 7.]]], dtype=dtype)
    z_q, loss, ids = q(z)
    assert ids.dtype == torch.long and ids.shape == (2, 3)
    assert ids.tolist() == [[0, 1, 2], [0, 2, 1]]
    assert z_q.dtype == torch.float32 and z_q.shape == (2, 3, 2)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(z_q, CODES3[ids], rtol=0, atol=1e-6)


def test_nearest_code_matches_brute_force_euclidean_distance():
    g = torch.Generator().manual_seed(3)
    codebook = F.normalize(torch.randn(32, 6, generator=g), dim=1)
    z = torch.randn(4, 25, 6, generator=g) * torch.rand(4, 25, 1, generator=g) * 10
    q = make_quantizer(codebook).eval()
    _, _, ids = q(z)
    zn = z / z.norm(dim=-1, keepdim=True)
    dist = ((zn.unsqueeze(-2) - codebook) ** 2).sum(-1)  # [4, 25, 32]
    assert torch.equal(ids, dist.argmin(-1))


# ---------------------------------------------------------------------------------------
# 2. EMA update
# ---------------------------------------------------------------------------------------
def test_ema_update_by_hand():
    q = make_quantizer([[1., 0.], [0., 1.]], decay=0.5).train()
    with torch.no_grad():
        q.cluster_size.copy_(torch.tensor([4., 6.]))
    # Normalised: (0.8, 0.6) and (0.6, -0.8); both nearer e0 than e1.
    z = torch.tensor([[[8., 6.], [1.2, -1.6]]])
    z_q, _, ids = q(z)
    assert ids.tolist() == [[0, 0]]
    # z_q comes from the codebook before the update.
    torch.testing.assert_close(z_q, torch.tensor([[[1., 0.], [1., 0.]]]), rtol=0, atol=1e-6)
    # mean of the normalised vectors = (0.7, -0.1); l2norm -> (0.98995, -0.14142);
    # 0.5 * e0 + 0.5 * that = (0.99497, -0.07071), norm 0.99748 -> (0.99748, -0.07089).
    torch.testing.assert_close(q.codebook[0], torch.tensor([0.99748421, -0.07088902]),
                               rtol=0, atol=1e-6)
    assert torch.equal(q.codebook[1], torch.tensor([0., 1.]))  # unused: unchanged
    # cluster_size = 0.5 * old + 0.5 * counts = 0.5 * (4, 6) + 0.5 * (2, 0).
    assert torch.equal(q.cluster_size, torch.tensor([3., 3.]))


def test_ema_update_equals_reference_and_keeps_unit_norms():
    g = torch.Generator().manual_seed(0)
    codebook = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    q = make_quantizer(codebook, decay=0.9).train()
    ref_codebook, ref_size = codebook.clone(), torch.zeros(16)
    for step in range(40):
        z = torch.randn(3, 7, 8, generator=g) * (0.01 + 20 * torch.rand(1, generator=g))
        q(z)
        ref_codebook, counts = reference_ema(ref_codebook, F.normalize(z.view(-1, 8), dim=1),
                                             0.9)
        ref_size = 0.9 * ref_size + 0.1 * counts
        if step in (0, 5):
            torch.testing.assert_close(q.codebook, ref_codebook, rtol=0, atol=1e-5)
            torch.testing.assert_close(q.cluster_size, ref_size, rtol=0, atol=1e-5)
    torch.testing.assert_close(q.codebook.norm(dim=1), torch.ones(16), rtol=0, atol=1e-5)
    assert not torch.equal(q.codebook, codebook)


def test_codebook_is_not_a_parameter():
    q = NormEMAQuantizer(num_tokens=8, embed_dims=4)
    assert list(q.parameters()) == []
    assert {'embedding.weight', 'embedding.initted', 'cluster_size'} == set(q.state_dict())


# ---------------------------------------------------------------------------------------
# 3. loss and straight-through gradient
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('training', [False, True])
def test_commitment_loss_and_straight_through_gradient(training):
    g = torch.Generator().manual_seed(1)
    codebook = F.normalize(torch.randn(10, 5, generator=g), dim=1)
    z = (torch.randn(2, 6, 5, generator=g) * 3).requires_grad_()
    grad_out = torch.randn(2, 6, 5, generator=g)
    q = make_quantizer(codebook, beta=0.25).train(training)
    z_q, loss, ids = q(z)

    zn = z.detach() / z.detach().norm(dim=-1, keepdim=True)
    chosen = codebook[ids]
    assert torch.allclose(loss, 0.25 * ((chosen - zn) ** 2).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(z_q.detach(), chosen, rtol=0, atol=1e-6)

    (grad_st, ) = torch.autograd.grad((z_q * grad_out).sum(), z, retain_graph=True)
    z2 = z.detach().clone().requires_grad_()
    (expected, ) = torch.autograd.grad((F.normalize(z2, dim=-1) * grad_out).sum(), z2)
    torch.testing.assert_close(grad_st, expected, rtol=1e-5, atol=1e-6)
    # The loss pulls the (normalised) features towards their codes, not the codes.
    (grad_loss, ) = torch.autograd.grad(loss, z)
    z3 = z.detach().clone().requires_grad_()
    (expected, ) = torch.autograd.grad(
        0.25 * ((chosen - F.normalize(z3, dim=-1)) ** 2).mean(), z3)
    torch.testing.assert_close(grad_loss, expected, rtol=1e-5, atol=1e-7)
    assert grad_loss.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# 4. eval mode
# ---------------------------------------------------------------------------------------
def test_eval_mode_updates_nothing_and_runs_no_kmeans(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError('k-means must not run in eval mode')

    monkeypatch.setattr(quantizer_mod, 'spherical_kmeans', fail)
    for kmeans_init in (True, False):
        torch.manual_seed(0)
        q = NormEMAQuantizer(num_tokens=8, embed_dims=4, kmeans_init=kmeans_init).eval()
        with torch.no_grad():
            q.cluster_size.fill_(2.)
        before = {k: v.clone() for k, v in q.state_dict().items()}
        for _ in range(3):
            q(torch.randn(2, 5, 4))
        assert q.embedding.initted.item() == float(not kmeans_init)
        for k, v in q.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert torch.equal(q.usage_counts, torch.zeros(8, dtype=torch.float64))
    # ... while in training the (patched) k-means is called.
    q.kmeans_init = True
    q.embedding.initted.zero_()
    with pytest.raises(AssertionError, match='k-means must not run'):
        q.train()(torch.randn(2, 5, 4))


# ---------------------------------------------------------------------------------------
# 5. k-means init
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('num_samples, num_codes', [(40, 6), (5, 8)])
def test_spherical_kmeans_matches_reference(num_samples, num_codes):
    g = torch.Generator().manual_seed(2)
    x = F.normalize(torch.randn(num_samples, 3, generator=g), dim=1)
    torch.manual_seed(7)
    means, counts = spherical_kmeans(x, num_codes, iters=10)
    torch.manual_seed(7)
    if num_samples >= num_codes:
        rows = torch.randperm(num_samples)[:num_codes]
    else:  # with replacement
        rows = torch.randint(0, num_samples, (num_codes, ))
    ref_means, ref_counts = reference_kmeans(x, rows, 10)
    torch.testing.assert_close(means, ref_means, rtol=0, atol=1e-6)
    assert torch.equal(counts, ref_counts)
    assert counts.sum() == num_samples


def test_kmeans_draws_with_replacement_when_samples_are_few():
    x = F.normalize(torch.randn(3, 4), dim=1)
    torch.manual_seed(0)
    means, counts = spherical_kmeans(x, 12, iters=0)
    torch.manual_seed(0)
    rows = torch.randint(0, 3, (12, ))
    assert torch.equal(means, x[rows])
    # 12 rows from 3 samples: only the 3 sample vectors occur, repeated.
    assert len({tuple(r.tolist()) for r in means}) <= 3
    assert torch.equal(counts, torch.zeros(12))


@pytest.mark.parametrize('num_samples', [30, 5])
def test_first_training_forward_runs_kmeans_then_ema(num_samples):
    k, d, decay = 8, 4, 0.9
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1, num_samples, d, generator=g)
    q = NormEMAQuantizer(num_tokens=k, embed_dims=d, decay=decay, kmeans_init=True,
                         kmeans_iters=10).train()
    assert q.embedding.initted.item() == 0
    torch.manual_seed(11)
    _, _, ids = q(z)

    x = F.normalize(z[0], dim=1)
    torch.manual_seed(11)
    rows = (torch.randperm(num_samples)[:k] if num_samples >= k else
            torch.randint(0, num_samples, (k, )))
    means, km_counts = reference_kmeans(x, rows, 10)
    assert torch.equal(ids[0], (x @ means.t()).argmax(1))  # tokens use the k-means codes
    ref_codebook, counts = reference_ema(means, x, decay)
    torch.testing.assert_close(q.codebook, ref_codebook, rtol=0, atol=1e-6)
    # cluster_size starts from the k-means cluster sizes, then takes the EMA step.
    torch.testing.assert_close(q.cluster_size, decay * km_counts + (1 - decay) * counts,
                               rtol=0, atol=1e-5)
    assert q.embedding.initted.item() == 1
    # The second forward does not run k-means again: one plain EMA step.
    z2 = torch.randn(1, num_samples, d, generator=g)
    expected, _ = reference_ema(q.codebook.clone(), F.normalize(z2[0], dim=1), decay)
    q(z2)
    torch.testing.assert_close(q.codebook, expected, rtol=0, atol=1e-6)


def test_kmeans_recovers_well_separated_clusters():
    dirs = torch.eye(8)[:4]
    g = torch.Generator().manual_seed(0)
    x = dirs.repeat_interleave(25, 0) + 0.05 * torch.randn(100, 8, generator=g)
    cluster = torch.arange(4).repeat_interleave(25)

    def seeds_four_clusters(seed):
        torch.manual_seed(seed)
        return len(set(cluster[torch.randperm(100)[:4]].tolist())) == 4

    # A seed whose initial rows (reproduced here) come from 4 different clusters.
    seed = next(s for s in range(100) if seeds_four_clusters(s))
    q = NormEMAQuantizer(num_tokens=4, embed_dims=8, kmeans_init=True).train()
    torch.manual_seed(seed)
    _, _, ids = q(x.unsqueeze(0))
    sim = q.codebook @ dirs.t()  # [codes, clusters]
    assert (sim.max(dim=0).values > 0.99).all()
    assert sorted(sim.argmax(dim=1).tolist()) == [0, 1, 2, 3]
    # Every cluster maps to one token.
    for c in range(4):
        assert len(set(ids[0, cluster == c].tolist())) == 1
    assert len(set(ids[0].tolist())) == 4


# ---------------------------------------------------------------------------------------
# 6. usage statistics
# ---------------------------------------------------------------------------------------
def test_usage_counts_accumulate_and_pop_resets():
    q = make_quantizer(torch.eye(4)).train()
    q(torch.tensor([[[1., 0, 0, 0], [2., 0, 0, 0], [0, 0, 3., 0]]]))
    q(torch.tensor([[[0, 0, 1., 0]], [[0, 0, 0, 5.]]]))
    q.eval()(torch.tensor([[[1., 0, 0, 0]]]))  # eval forwards are not counted
    counts = q.pop_usage_counts()
    assert counts.dtype == torch.float64
    assert counts.tolist() == [2., 0., 2., 1.]
    assert q.pop_usage_counts().tolist() == [0., 0., 0., 0.]
    q.train()(torch.tensor([[[0, 1., 0, 0]]]))
    assert q.pop_usage_counts().tolist() == [0., 1., 0., 0.]


@pytest.mark.parametrize('counts, usage, perplexity, unused', [
    ([3, 3, 3, 3], 1.0, 4.0, 0),
    ([0, 7, 0, 0], 0.25, 1.0, 3),
    ([1, 1, 2, 0], 0.75, 2 ** 1.5, 1),   # p = (1/4, 1/4, 1/2): H = 1.5 ln 2
    ([5] * 10 + [0] * 30, 0.25, 10.0, 30),
    ([0, 0, 0], 0.0, 0.0, 3),
])
def test_codebook_usage_stats(counts, usage, perplexity, unused):
    stats = codebook_usage_stats(torch.tensor(counts, dtype=torch.float32))
    assert stats['usage'] == pytest.approx(usage)
    assert stats['perplexity'] == pytest.approx(perplexity, rel=1e-9)
    assert stats['unused'] == unused


# ---------------------------------------------------------------------------------------
# 7. dead-code restart
# ---------------------------------------------------------------------------------------
def test_dead_codes_are_restarted_from_batch_rows():
    codebook = torch.eye(4)
    z = torch.cat([torch.tensor([[3., 0.5, 0, 0], [2., 0, -0.4, 0.1]]),
                   torch.tensor([[1., 0.2, 0.3, 0.], [4., 0, 0, 1.]])]).view(1, 4, 4)
    q = make_quantizer(codebook, decay=0.5, dead_code_threshold=0.5).train()
    torch.manual_seed(5)
    q(z)
    # All 4 rows go to code 0: cluster_size = 0.5 * 0 + 0.5 * (4, 0, 0, 0) = (2, 0, 0, 0),
    # so codes 1-3 fall below 0.5 and take 3 distinct rows of the normalised batch.
    x = z[0] / z[0].norm(dim=1, keepdim=True)
    torch.manual_seed(5)
    rows = torch.randperm(4)[:3]
    torch.testing.assert_close(q.codebook[1:], x[rows], rtol=0, atol=1e-6)
    expected0, _ = reference_ema(codebook, x, 0.5)
    torch.testing.assert_close(q.codebook[0], expected0[0], rtol=0, atol=1e-6)
    assert q.cluster_size.tolist() == [2., 0.5, 0.5, 0.5]
    assert q.num_restarted == 3
    # A restarted code has one step of grace: after the next batch, which again goes to
    # code 0 only, cluster_size of codes 1-3 is 0.25 < 0.5 and they are restarted again.
    q.embedding.weight.copy_(codebook)
    q(z)
    assert q.num_restarted == 6
    assert q.cluster_size[1:].tolist() == [0.5, 0.5, 0.5]


def test_dead_code_restart_with_more_dead_codes_than_rows():
    q = make_quantizer(torch.eye(6), decay=0.5, dead_code_threshold=1.0).train()
    z = torch.tensor([[[1., 0.1, 0, 0, 0, 0], [0., 0, 2., 0.1, 0, 0]]])
    torch.manual_seed(9)
    q(z)
    # cluster_size = (0.5, 0, 0.5, 0, 0, 0): all 6 codes are dead, 2 rows to draw from.
    x = z[0] / z[0].norm(dim=1, keepdim=True)
    torch.manual_seed(9)
    rows = torch.randint(0, 2, (6, ))
    torch.testing.assert_close(q.codebook, x[rows], rtol=0, atol=1e-6)
    assert q.num_restarted == 6 and q.cluster_size.tolist() == [1.] * 6


def test_no_restart_with_threshold_zero():
    q = make_quantizer(torch.eye(4), decay=0.5).train()
    q(torch.tensor([[[3., 0.5, 0, 0], [2., 0, -0.4, 0.1]]]))
    assert q.num_restarted == 0
    assert torch.equal(q.codebook[1:], torch.eye(4)[1:])
    assert q.cluster_size.tolist() == [1., 0., 0., 0.]


# ---------------------------------------------------------------------------------------
# 8. state dict and errors
# ---------------------------------------------------------------------------------------
def test_official_layout_loads_strictly():
    g = torch.Generator().manual_seed(0)
    weight = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    official = {
        'embedding.weight': weight,
        'embedding.cluster_size': torch.rand(8, generator=g),
        'embedding.embed_avg': torch.randn(8, 4, generator=g),
        'embedding.initted': torch.tensor([1.]),
        'cluster_size': torch.rand(8, generator=g),
    }
    q = NormEMAQuantizer(num_tokens=8, embed_dims=4, kmeans_init=True)
    q.load_state_dict(dict(official), strict=True)
    assert torch.equal(q.codebook, weight)
    assert torch.equal(q.cluster_size, official['cluster_size'])
    assert q.embedding.initted.item() == 1  # no k-means on a loaded codebook
    # Also under a prefix, as inside VQ-KD.
    parent = nn.Module()
    parent.quantize = NormEMAQuantizer(num_tokens=8, embed_dims=4)
    parent.load_state_dict({f'quantize.{k}': v for k, v in official.items()}, strict=True)
    assert torch.equal(parent.quantize.codebook, weight)
    # Anything else unexpected is still reported.
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\).*embedding\.bogus'):
        q.load_state_dict(dict(official, **{'embedding.bogus': torch.zeros(1)}))
    # In a checked load the two keys are reported as dropped, with the reason, under
    # their full names; a file without them drops nothing.
    report = load_state_dict_checked(parent, {f'quantize.{k}': v for k, v in official.items()},
                                     source='official', log=False)
    assert report.ok and report.dropped == [
        ('quantize.embedding.cluster_size, quantize.embedding.embed_avg',
         'statistics of the official VQ-KD file that the normalised-EMA update never reads')]
    ours = {k: v for k, v in official.items() if k in q.state_dict()}
    report = load_state_dict_checked(q, ours, source='ours', log=False)
    assert report.ok and report.dropped == [] and sorted(report.loaded) == sorted(ours)


def test_errors():
    q = NormEMAQuantizer(num_tokens=8, embed_dims=4)
    with pytest.raises(ValueError) as err:
        q(torch.randn(2, 3, 5))
    assert str(err.value) == ('NormEMAQuantizer expects features with last dimension 4, '
                              'got shape (2, 3, 5)')
    with pytest.raises(ValueError, match=r'^decay must be in \[0, 1\), got 1\.0$'):
        NormEMAQuantizer(decay=1.0)
    with pytest.raises(ValueError, match=r'^dead_code_threshold must be >= 0, got -1$'):
        NormEMAQuantizer(dead_code_threshold=-1)


# ---------------------------------------------------------------------------------------
# 9. two CPU ranks (gloo)
# ---------------------------------------------------------------------------------------
WORKER = r'''
import sys
import torch
import torch.distributed as dist
from mmbeit.models.tokenizers.quantizer import NormEMAQuantizer

torch.set_num_threads(1)
out = sys.argv[1]
dist.init_process_group('gloo', init_method='env://')
rank = dist.get_rank()
res = {}


def batch(seed, n):
    return torch.randn(1, n, 4, generator=torch.Generator().manual_seed(seed))


# (a) EMA statistics: same initial codebook, different batches.
torch.manual_seed(0)
q = NormEMAQuantizer(num_tokens=8, embed_dims=4, decay=0.9, kmeans_init=False).train()
_, _, ids = q(batch(100 + rank, 12))
res['ema'] = dict(codebook=q.codebook.clone(), cluster_size=q.cluster_size.clone(),
                  usage=q.pop_usage_counts(), ids=ids)

# (b) k-means init: rank 0 runs it on its batch and broadcasts. Each rank seeds its RNG
# differently, so a rank running its own k-means would end elsewhere.
torch.manual_seed(50 + rank)
q = NormEMAQuantizer(num_tokens=8, embed_dims=4, decay=0.9, kmeans_init=True).train()
torch.manual_seed(1 + 1000 * rank)
q(batch(200 + rank, 20))
res['kmeans'] = dict(codebook=q.codebook.clone(), cluster_size=q.cluster_size.clone(),
                     initted=q.embedding.initted.clone())

# (c) dead-code restart: rows chosen on rank 0, broadcast.
torch.manual_seed(0)
q = NormEMAQuantizer(num_tokens=8, embed_dims=4, decay=0.5, kmeans_init=False,
                     dead_code_threshold=1.0).train()
torch.manual_seed(3 + 1000 * rank)
q(batch(300 + rank, 3))
res['restart'] = dict(codebook=q.codebook.clone(), cluster_size=q.cluster_size.clone(),
                      num_restarted=q.num_restarted)
torch.save(res, f'{out}/rank{rank}.pt')
dist.barrier()
dist.destroy_process_group()
'''


def test_two_ranks_share_statistics(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()), WORLD_SIZE='2')
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))

    def batch(seed, n):
        return torch.randn(1, n, 4, generator=torch.Generator().manual_seed(seed))

    # (a) both ranks equal, and equal to one process on the concatenated batch.
    for key in ('codebook', 'cluster_size', 'usage'):
        assert torch.equal(r0['ema'][key], r1['ema'][key]), key
    torch.manual_seed(0)
    single = NormEMAQuantizer(num_tokens=8, embed_dims=4, decay=0.9, kmeans_init=False)
    both = torch.cat([batch(100, 12), batch(101, 12)], dim=1)
    _, _, ids = single.train()(both)
    torch.testing.assert_close(r0['ema']['codebook'], single.codebook, rtol=0, atol=1e-6)
    torch.testing.assert_close(r0['ema']['cluster_size'], single.cluster_size, rtol=0,
                               atol=1e-6)
    assert torch.equal(r0['ema']['usage'], single.pop_usage_counts())
    assert torch.equal(torch.cat([r0['ema']['ids'], r1['ema']['ids']], dim=1), ids)
    # The shared statistics matter: one rank's batch alone gives another codebook.
    torch.manual_seed(0)
    alone = NormEMAQuantizer(num_tokens=8, embed_dims=4, decay=0.9, kmeans_init=False)
    alone.train()(batch(100, 12))
    assert not torch.allclose(alone.codebook, single.codebook, atol=1e-4)

    # (b) k-means: identical on both ranks = rank 0's k-means, then the shared EMA step.
    for key in ('codebook', 'cluster_size', 'initted'):
        assert torch.equal(r0['kmeans'][key], r1['kmeans'][key]), key
    assert r0['kmeans']['initted'].item() == 1
    x0, x1 = (F.normalize(batch(s, 20)[0], dim=1) for s in (200, 201))
    torch.manual_seed(1)
    means, km_counts = reference_kmeans(x0, torch.randperm(20)[:8], 10)
    expected, counts = reference_ema(means, torch.cat([x0, x1]), 0.9)
    torch.testing.assert_close(r0['kmeans']['codebook'], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(r0['kmeans']['cluster_size'],
                               0.9 * km_counts + 0.1 * counts, rtol=0, atol=1e-5)

    # (c) restart: identical on both ranks; new codes are rows of rank 0's batch.
    assert torch.equal(r0['restart']['codebook'], r1['restart']['codebook'])
    assert torch.equal(r0['restart']['cluster_size'], r1['restart']['cluster_size'])
    assert r0['restart']['num_restarted'] == r1['restart']['num_restarted'] > 0
    dead = r0['restart']['cluster_size'] == 1.0
    assert int(dead.sum()) == r0['restart']['num_restarted']
    x0 = F.normalize(batch(300, 3)[0], dim=1)
    sims = r0['restart']['codebook'][dead] @ x0.t()  # each restarted code is a row of x0
    assert torch.allclose(sims.max(dim=1).values, torch.ones(int(dead.sum())), atol=1e-6)
    assert math.isclose(float(r0['restart']['codebook'].norm(dim=1).min()), 1, abs_tol=1e-5)
