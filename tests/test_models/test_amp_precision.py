"""bf16 autocast and host reads in the training-time paths.

1. fp32 islands: under ``torch.autocast('cpu', bfloat16)`` the parts of the method that
   need fp32 compute what the fp32 computation does: quantizer tokens (given the same
   features), the VQ-KD task layer, HOG tokens and the MIM head's softmax / cross-entropy
   (the head's Linear does run in bf16: its loss is compared with a bound derived below).
2. No host reads per step: after the first step (a one-time k-means flag, the first
   range checks), the training forwards of the quantizer, the tokenizers, the MIM head and
   the BEiT algorithm, and the codebook-usage hook between log lines, call none of
   ``Tensor.item / tolist / cpu / numpy / __bool__ / __float__ / __int__`` (each would wait
   for a GPU to finish the queued work).
"""
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub

from mmbeit.engine.hooks import CodebookUsageHook
from mmbeit.models.heads import MIMHead
from mmbeit.models.tokenizers.dall_e import DALLETokenizer
from mmbeit.models.tokenizers.hog import HOGTokenizer
from mmbeit.models.tokenizers.quantizer import NormEMAQuantizer, codebook_usage_stats
from mmbeit.models.tokenizers.vqkd import VQKD

pytestmark = pytest.mark.usefixtures('one_thread')

BF16 = dict(device_type='cpu', dtype=torch.bfloat16)
_READS = ('item', 'tolist', 'cpu', 'numpy', '__bool__', '__float__', '__int__', '__index__')


@contextmanager
def no_host_reads():
    """Every Python-level read of a tensor's value on the host raises inside."""
    saved = {name: getattr(torch.Tensor, name) for name in _READS}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f'host read in a training step: Tensor.{name}')
        return read

    for name in _READS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def test_no_host_reads_catches_reads():
    with no_host_reads(), pytest.raises(AssertionError, match=r'Tensor\.item'):
        torch.ones(1).item()
    with no_host_reads(), pytest.raises(AssertionError, match='__bool__'):
        bool(torch.ones(1) > 0)
    assert torch.ones(1).item() == 1.0  # restored


# ---------------------------------------------------------------------------------------
# 1. fp32 islands
# ---------------------------------------------------------------------------------------
def test_quantizer_tokens_under_bf16_equal_fp32():
    torch.manual_seed(0)
    q = NormEMAQuantizer(num_tokens=64, embed_dims=8, kmeans_init=False).eval()
    z = torch.randn(4, 49, 8).bfloat16()  # what a bf16 encoder hands over
    with torch.autocast(**BF16):
        z_q, loss, ids = q(z)
    ref_q, ref_loss, ref_ids = q(z.float())
    assert z_q.dtype is torch.float32 and loss.dtype is torch.float32
    assert torch.equal(ids, ref_ids)
    assert torch.equal(z_q, ref_q) and torch.equal(loss, ref_loss)
    # the tokens are those of the cosine rule in fp32 (not of a bf16 matmul)
    unit = F.normalize(z.float().reshape(-1, 8), dim=1)
    assert torch.equal(ids.flatten(), (unit @ q.codebook.t()).argmax(1))


def test_vqkd_task_layer_and_quantizer_stay_fp32_under_bf16():
    arch = dict(embed_dims=32, num_layers=1, num_heads=4, feedforward_channels=64)
    torch.manual_seed(0)
    model = VQKD(encoder=dict(arch=arch, img_size=32, patch_size=8), with_decoder=False,
                 quantizer=dict(num_tokens=32, embed_dims=8, kmeans_init=False)).eval()
    for p in model.encode_task_layer.parameters():
        p.data.normal_(0, 0.3)
    feats, seen = {}, {}
    # (hooks return None: a returned value would replace the module's output)
    model.encoder.register_forward_hook(lambda m, i, o: feats.update(x=o[-1]))
    model.quantize.register_forward_pre_hook(lambda m, i: seen.update(z=i[0]))
    model.encoder.blocks[0].mlp.fc1.register_forward_hook(
        lambda m, i, o: seen.update(fc1=o.dtype))
    images = torch.rand(2, 3, 32, 32)
    with torch.autocast(**BF16):
        ids = model.tokenize(images)
    x = feats['x'].flatten(2).transpose(1, 2)
    assert seen['fc1'] is torch.bfloat16  # the ViT encoder does run in bf16
    assert seen['z'].dtype is torch.float32
    z = model.encode_task_layer(x.float())  # fp32, outside autocast
    assert torch.equal(seen['z'], z)
    assert torch.equal(ids, model.quantize(z)[2])


def hog_tokenizer():
    g = torch.Generator().manual_seed(3)
    tok = HOGTokenizer(num_tokens=17, input_size=32, flat_threshold=0.02)
    tok.codebook.copy_(F.normalize(torch.randn(16, 36, generator=g), dim=1))
    images = torch.rand(3, 3, 32, 32, generator=g)
    images[0] = 0.5  # a flat image: token 0 everywhere
    return tok, images


def test_hog_tokens_under_bf16_equal_fp32():
    tok, images = hog_tokenizer()
    ref = tok.tokenize(images)
    with torch.autocast(**BF16):
        got = tok.tokenize(images)
        desc = tok.descriptors(images)
    assert desc.dtype is torch.float32
    assert torch.equal(got, ref)
    assert (ref[0] == 0).all() and (ref[1:] > 0).any()


def test_mim_head_softmax_and_loss_in_fp32_under_bf16():
    """The logits come from a bf16 Linear; everything after them is fp32. So the loss
    equals the fp32 cross-entropy of the bf16 logits exactly, and differs from the all-fp32
    loss by at most 2 x the largest logit change: d CE / d logits = softmax - one_hot,
    whose L1 norm is at most 2, so CE is 2-Lipschitz in the max norm (row by row, and the
    mean over rows keeps the bound)."""
    torch.manual_seed(0)
    head = MIMHead(in_channels=64, vocab_size=512)
    head.init_weights()
    x = torch.randn(100, 64) * 3
    target = torch.randint(0, 512, (100, ))
    with torch.autocast(**BF16):
        out = head.loss(x, target)
    logits16 = F.linear(x.bfloat16(), head.lm_head.weight.bfloat16(),
                        head.lm_head.bias.bfloat16()).float()
    assert out['loss'].dtype is torch.float32
    assert torch.equal(out['loss'], F.cross_entropy(logits16, target))
    assert torch.equal(out['acc'], (logits16.argmax(1) == target).float().mean() * 100)
    full = head.loss(x, target)
    logits32 = head(x)
    bound = 2 * (logits16 - logits32).abs().max()
    assert 0 < (out['loss'] - full['loss']).abs() <= bound


# ---------------------------------------------------------------------------------------
# 2. no host reads per step
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('dead_code_threshold', [0.0, 0.5])
def test_quantizer_training_forward_reads_nothing_after_kmeans(dead_code_threshold):
    torch.manual_seed(0)
    q = NormEMAQuantizer(num_tokens=16, embed_dims=4, kmeans_init=True, decay=0.5,
                         dead_code_threshold=dead_code_threshold).train()
    q(torch.randn(2, 20, 4))  # k-means on the first batch (reads the flag once)
    for _ in range(2):
        with no_host_reads():
            z_q, loss, ids = q(torch.randn(1, 6, 4))  # 6 rows, 16 codes: some die
            loss.backward() if loss.requires_grad else None
    assert q.embedding.initted.item() == 1
    if dead_code_threshold:
        assert q.num_restarted.item() > 0


def test_quantizer_flag_follows_writes_of_the_buffer():
    torch.manual_seed(0)
    q = NormEMAQuantizer(num_tokens=4, embed_dims=4, kmeans_init=True).train()
    q(torch.randn(1, 8, 4))
    assert q.embedding.initted.item() == 1
    first = q.codebook.clone()
    q(torch.randn(1, 8, 4))  # no k-means: one EMA step
    q.embedding.initted.zero_()  # written in place: the next forward runs k-means again
    z = torch.randn(1, 8, 4)
    torch.manual_seed(5)
    q(z)
    assert q.embedding.initted.item() == 1
    assert not torch.equal(q.codebook, first)
    # a loaded state (initted = 0) is seen too
    q.load_state_dict(dict(q.state_dict(), **{'embedding.initted': torch.tensor([0.])}))
    calls = []
    q._kmeans_init_ = lambda flat: calls.append(flat.shape)
    q(torch.randn(1, 8, 4))
    assert calls == [(8, 4)]


def test_hog_tokenize_reads_nothing_once_fitted_is_known():
    tok, images = hog_tokenizer()
    tok.tokenize(images)
    with no_host_reads():
        tok.tokenize(images)
    tok.codebook.zero_()  # written: the unfitted codebook is noticed
    with pytest.raises(RuntimeError, match='HOGTokenizer has no codebook'):
        tok.tokenize(images)


def test_dall_e_range_check_reads_first_then_asserts_async():
    tok = DALLETokenizer(encoder=dict(n_hid=8, n_blk_per_group=1, vocab_size=32),
                         input_size=32)
    x = torch.rand(1, 3, 32, 32)
    # On CPU every call reads the range (it waits for no device) and names it.
    with pytest.raises(ValueError, match=r'in \[0, 1\].*got values in \[0, 255\]'):
        tok.tokenize(torch.cat([x * 0, x * 0 + 255]))
    # As on an accelerator: the first RANGE_CHECKS_READ calls read, later ones assert
    # on the device without a host read and still stop a bad batch.
    tok.RANGE_READ_DEVICES = ()
    for _ in range(tok.RANGE_CHECKS_READ):
        tok.tokenize(x)
    with no_host_reads():
        tok.tokenize(x)
    with pytest.raises(RuntimeError, match='an input batch left'):
        tok.tokenize(x * 255)


def test_beit_v2_loss_reads_nothing(tmp_path):
    from mmbeit.models.algorithms import BEiT
    tok, images = hog_tokenizer()
    torch.save(dict(state_dict=dict(codebook=tok.codebook),
                    meta=dict(hog_tokenizer=tok.hparams())), tmp_path / 'hog.pth')
    arch = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)
    model = BEiT(
        backbone=dict(type='BEiTViT', arch=arch, img_size=32, patch_size=8,
                      use_mask_token=True, final_norm=True, out_type='raw',
                      rel_pos_bias='shared', drop_path_rate=0.1),
        neck=dict(type='BEiTV2Neck', early_layers=1, num_layers=1, embed_dims=32,
                  num_heads=4, feedforward_channels=64, backbone_layers=2),
        head=dict(type='MIMHead', in_channels=32, vocab_size=17),
        target_generator=dict(type='HOGTokenizer', num_tokens=17, input_size=32,
                              flat_threshold=0.02, checkpoint=str(tmp_path / 'hog.pth')))
    model.init_weights()
    model.train()
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, ::3] = True
    model.loss(images, images, mask)  # first step: the codebook flag is read once
    with no_host_reads(), torch.autocast(**BF16):
        losses = model.loss(images, images, mask)
        sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    assert all(torch.isfinite(v) for v in losses.values())


class _Runner:

    def __init__(self, model, name):
        self.model = model
        self.message_hub = MessageHub(name)


def test_codebook_hook_reads_counts_only_when_it_publishes():
    q = NormEMAQuantizer(num_tokens=8, embed_dims=8, kmeans_init=False, decay=0.5).train()
    q.embedding.weight.copy_(torch.eye(8))
    model = torch.nn.Module()
    model.quantize = q
    q(torch.eye(8)[None, :2])  # reads the initted flag once; not counted (before_train)
    runner = _Runner(model, 'amp_precision_hook')
    hook = CodebookUsageHook(window=3, interval=4)
    hook.before_train(runner)
    seen = []
    for it in range(8):
        codes = [it % 8, (it * 3) % 8, 1]
        with no_host_reads() if (it + 1) % 4 else contextmanager(lambda: (yield))():
            _, _, ids = q(torch.eye(8)[codes].unsqueeze(0))
            hook.after_train_iter(runner, batch_idx=it)
        seen.append(Counter(codes))
        published = 'train/codebook_usage' in runner.message_hub.log_scalars
        assert published == (it >= 3)
        if (it + 1) % 4 == 0:
            window = sum(seen[-3:], Counter())
            counts = torch.zeros(8)
            for code, n in window.items():
                counts[code] = n
            stats = codebook_usage_stats(counts)
            hub = runner.message_hub
            assert hub.get_scalar('train/codebook_usage').current() == stats['usage']
            assert hub.get_scalar('train/codebook_perplexity').current() == pytest.approx(
                stats['perplexity'])
