"""BEiT / BEiT v2 pretraining pieces: MIMHead, BEiTV2Neck,
MIMDataPreprocessor, the BEiT algorithm, and frozen sub-models kept out of checkpoints.
The v1 and v2 losses are checked against hand-assembled computations that use only the
backbone's blocks and plain torch ops."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope

import mmbeit.models  # noqa: F401
from mmbeit.models.utils import keep_out_of_checkpoints
from mmbeit.registry import MODELS

T = dict(embed_dims=32, num_layers=4, num_heads=4, feedforward_channels=64)


# One intra-op thread (tests/conftest.py): tiny ops run faster so, also on a busy machine.
pytestmark = pytest.mark.usefixtures('one_thread')


def build(v2=True, vocab=16, **kw):
    neck = dict(type='BEiTV2Neck', early_layers=2, num_layers=2, embed_dims=32, num_heads=4,
                feedforward_channels=64, backbone_layers=4) if v2 else None
    cfg = dict(
        type='BEiT',
        backbone=dict(type='BEiTViT', arch=T, img_size=32, patch_size=8, use_mask_token=True,
                      final_norm=True, rel_pos_bias='shared', out_type='raw'),
        neck=neck, head=dict(type='MIMHead', in_channels=32, vocab_size=vocab),
        target_generator=dict(type='VQKD', encoder=dict(arch=dict(T, num_layers=1),
                                                        img_size=32, patch_size=8),
                              with_decoder=False, quantizer=dict(num_tokens=vocab,
                                                                 embed_dims=8)),
        data_preprocessor=dict(type='MIMDataPreprocessor', patch_size=8))
    cfg.update(kw)
    with DefaultScope.overwrite_default_scope('mmbeit'):
        torch.manual_seed(0)
        model = MODELS.build(cfg)
        model.init_weights()
    with torch.no_grad():  # a head that discriminates, so the two streams' losses differ
        model.head.lm_head.weight.normal_(0, 1)
        model.head.lm_head.bias.normal_(0, 1)
    return model


def batch(b=3, size=32, seed=0):
    """What MIMMask + PackMIMInputs + pseudo_collate deliver:
    inputs = [views, tokenizer_views, masks] (half of each 4 x 4 grid masked in blocks)."""
    import numpy as np
    from mmengine.dataset import pseudo_collate

    from mmbeit.datasets import BlockwiseMaskGenerator
    g = torch.Generator().manual_seed(seed)
    np.random.seed(seed)
    gen = BlockwiseMaskGenerator(mask_ratio=0.5, min_num_patches=2)
    samples = [dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                                          generator=g) for _ in range(2)]
                    + [torch.from_numpy(gen.sample((size // 8, size // 8)))])
               for _ in range(b)]
    return pseudo_collate(samples)


def embed(backbone, x, mask):
    """Patch embedding, mask token and cls token by hand."""
    t = F.conv2d(x, backbone.patch_embed.proj.weight, backbone.patch_embed.proj.bias, stride=8)
    t = t.flatten(2).transpose(1, 2)  # [B, N, D]
    m = mask.unsqueeze(-1).float()
    t = t * (1 - m) + backbone.mask_token * m
    return torch.cat([backbone.cls_token.expand(len(t), -1, -1), t], 1)


def ce_and_acc(head, states, labels):
    logits = states @ head.lm_head.weight.t() + head.lm_head.bias
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean() * 100


def test_v2_loss_equals_hand_assembled_computation():
    model = build(v2=True)
    d = model.data_preprocessor(batch(), True)
    out = model(**d, mode='loss')

    bb, neck = model.backbone, model.neck
    labels = model.target_generator.tokenize(d['target_inputs'])[d['mask']]
    bias = bb.rel_pos_bias()
    x = embed(bb, d['inputs'], d['mask'])
    for i, blk in enumerate(bb.blocks):
        x = blk(x, bias)
        if i == 1:  # early_layers=2 (1-based)
            early = x
    final_norm = lambda t: F.layer_norm(t, (32, ), bb.norm.weight, bb.norm.bias, 1e-6)  # noqa
    agg = torch.cat([x[:, :1], early[:, 1:]], 1)
    for blk in neck.cls_pt_layers:
        agg = blk(agg, bias)
    l1, a1 = ce_and_acc(model.head, final_norm(x)[:, 1:][d['mask']], labels)
    l2, a2 = ce_and_acc(model.head, final_norm(agg)[:, 1:][d['mask']], labels)
    assert set(out) == {'loss_1', 'acc_1', 'loss_2', 'acc_2'}
    torch.testing.assert_close(out['loss_1'], l1)
    torch.testing.assert_close(out['loss_2'], l2)
    torch.testing.assert_close(out['acc_1'], a1)
    torch.testing.assert_close(out['acc_2'], a2)
    assert not torch.allclose(l1, l2)


@pytest.mark.parametrize('v2', [True, False], ids=['v2', 'v1'])
@pytest.mark.parametrize('counted', [True, False], ids=['num_masked', 'boolean_index'])
def test_loss_reads_targets_at_masked_positions_only(v2, counted):
    """The CE is over masked patches only: any token at an unmasked patch leaves every
    output bit for bit as it was, while one changed token at a masked patch changes the
    loss (both ways of gathering the masked positions)."""
    model = build(v2=v2)
    d = model.data_preprocessor(batch(), True)
    if not counted:
        d['num_masked'] = None
    mask = d['mask']
    assert 0 < int(mask.sum()) < mask.numel()
    tokens = model.targets(d['target_inputs'])
    vocab = model.head.vocab_size

    def loss_with(t):
        model.targets = lambda _: t  # the tokenizer's output replaced by these tokens
        try:
            return model(**d, mode='loss')
        finally:
            del model.targets

    ref = loss_with(tokens)
    unmasked_changed = torch.where(mask, tokens, (tokens + 1 + tokens.flip(0)) % vocab)
    assert (unmasked_changed != tokens)[~mask].any()
    out = loss_with(unmasked_changed)
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
    b, n = mask.nonzero()[0].tolist()  # one masked patch
    one_masked_changed = tokens.clone()
    one_masked_changed[b, n] = (tokens[b, n] + 1) % vocab
    out = loss_with(one_masked_changed)
    main = 'loss_1' if v2 else 'loss'
    assert not torch.equal(out[main], ref[main])


def test_v1_loss_and_gradients():
    model = build(v2=False)
    d = model.data_preprocessor(batch(), True)
    out = model(**d, mode='loss')
    assert set(out) == {'loss', 'acc'}
    bb = model.backbone
    labels = model.target_generator.tokenize(d['target_inputs'])[d['mask']]
    x = embed(bb, d['inputs'], d['mask'])
    for blk in bb.blocks:
        x = blk(x, bb.rel_pos_bias())
    states = F.layer_norm(x, (32, ), bb.norm.weight, bb.norm.bias, 1e-6)[:, 1:][d['mask']]
    loss, acc = ce_and_acc(model.head, states, labels)
    torch.testing.assert_close(out['loss'], loss)
    torch.testing.assert_close(out['acc'], acc)
    out['loss'].backward()
    assert bb.mask_token.grad is not None and bb.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target_generator.parameters())


def test_target_generator_is_frozen_and_not_in_checkpoints(tmp_path):
    model = build(v2=True)
    model.train()
    assert model.backbone.training and not model.target_generator.training
    assert not any(p.requires_grad for p in model.target_generator.parameters())
    sd = model.state_dict()
    assert not any(k.startswith('target_generator.') for k in sd)
    assert {'backbone.mask_token', 'backbone.norm.weight',
            'backbone.rel_pos_bias.relative_position_bias_table',
            'neck.cls_pt_layers.1.attn.qkv.weight', 'head.lm_head.weight'} <= set(sd)
    # strict loading of our own checkpoint; a file's target_generator keys are ignored and
    # the tokenizer keeps its weights
    other = build(v2=True)
    codebook = other.target_generator.quantize.embedding.weight.clone()
    junk = {f'target_generator.{k}': torch.zeros_like(v)
            for k, v in other.target_generator.state_dict().items()}
    other.load_state_dict({**sd, **junk}, strict=True)
    assert torch.equal(other.target_generator.quantize.embedding.weight, codebook)
    assert torch.equal(other.backbone.mask_token, model.backbone.mask_token)
    # through mmengine's checkpoint path too
    from mmengine.runner import load_checkpoint, save_checkpoint
    save_checkpoint({'state_dict': sd}, str(tmp_path / 'c.pth'))
    load_checkpoint(other, str(tmp_path / 'c.pth'), strict=True)


def test_keep_out_of_checkpoints_needs_a_submodule():
    with pytest.raises(AttributeError, match="has no sub-module 'nope'"):
        keep_out_of_checkpoints(torch.nn.Linear(2, 2), 'nope')


def test_grid_and_vocab_mismatch_errors():
    with pytest.raises(ValueError, match='head.vocab_size=16 but the tokenizer has 32 codes'):
        build(head=dict(type='MIMHead', in_channels=32, vocab_size=16),
              target_generator=dict(type='VQKD', with_decoder=False,
                                    encoder=dict(arch=T, img_size=32, patch_size=8),
                                    quantizer=dict(num_tokens=32, embed_dims=8)))
    with pytest.raises(ValueError, match=r'tokenizer gives a \(2, 2\) token grid but the '
                                         r'backbone has a \(4, 4\) patch grid'):
        build(target_generator=dict(type='VQKD', with_decoder=False,
                                    encoder=dict(arch=T, img_size=32, patch_size=16),
                                    quantizer=dict(num_tokens=16, embed_dims=8)))
    with pytest.raises(ValueError, match='use_mask_token=True'):
        build(backbone=dict(type='BEiTViT', arch=T, img_size=32, patch_size=8,
                            final_norm=True, rel_pos_bias='shared', out_type='raw'))


def test_preprocessor_normalises_views_and_moves_masks():
    import random

    import numpy as np
    model = build(v2=True)
    data = batch(b=2)
    # masks come from the pipeline (MIMMask): the preprocessor draws no random number, so
    # the global streams that seeded runs replay are the same after a call
    def streams():
        _, key, pos, *_ = np.random.get_state()
        return torch.get_rng_state(), key.copy(), pos, random.getstate()

    before = streams()
    d = model.data_preprocessor(data, True)
    after = streams()
    assert torch.equal(after[0], before[0]) and np.array_equal(after[1], before[1])
    assert after[2:] == before[2:]
    img = torch.stack(data['inputs'][0]).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    torch.testing.assert_close(d['inputs'], (img - mean) / std)
    tgt = torch.stack(data['inputs'][1]).float() / 255
    torch.testing.assert_close(d['target_inputs'], tgt)
    assert torch.equal(d['mask'], torch.stack(data['inputs'][2]))  # the pipeline's masks
    assert d['mask'].dtype == torch.bool and d['mask'].sum(1).tolist() == [8, 8]
    # default_collate's already stacked entries give the same result
    stacked = dict(inputs=[torch.stack(v) for v in data['inputs']])
    d2 = model.data_preprocessor(stacked, True)
    for key in ('inputs', 'target_inputs', 'mask'):
        assert torch.equal(d2[key], d[key])
    with pytest.raises(TypeError, match=r'MIMDataPreprocessor expects inputs = \[views, '
                       r'tokenizer_views, masks\] \(pipeline: ... BEiTMaskedViews, MIMMask, '
                       r'PackMIMInputs\), got 2 entries'):
        model.data_preprocessor(dict(inputs=stacked['inputs'][:2]), True)
    with pytest.raises(ValueError, match=r'masks must be bool \[B, N\] = \[2, 16\] for 32x32 '
                       r'views and patch_size 8, got torch.bool \[2, 64\]'):
        model.data_preprocessor(dict(inputs=stacked['inputs'][:2] + [
            torch.zeros(2, 64, dtype=torch.bool)]), True)
    with pytest.raises(TypeError, match=r'MIMDataPreprocessor no longer draws masks: move '
                       r"mask_generator=... into the training pipeline as dict\(type='mmbeit"
                       r".MIMMask'"):
        MODELS.build(dict(type='MIMDataPreprocessor', mask_generator=dict()))


def test_neck_init_and_drop_path_rates():
    from mmbeit.models.necks import BEiTV2Neck
    neck = BEiTV2Neck(early_layers=9, num_layers=2, embed_dims=32, num_heads=4,
                      feedforward_channels=64, drop_path_rate=0.1, backbone_layers=12)
    dpr = torch.linspace(0, 0.1, 12).tolist()
    assert [b.drop_path.drop_prob for b in neck.cls_pt_layers] == pytest.approx(dpr[9:11])
    torch.manual_seed(0)
    neck.init_weights()
    # block k is rescaled like backbone layer early_layers + k + 1 (unilm fix_init_weight)
    blk = neck.cls_pt_layers[1]
    ratio = blk.attn.proj.weight.std() / blk.attn.qkv.weight.std()  # qkv is not rescaled
    assert ratio.item() == pytest.approx(1 / (2 * 11)**0.5, rel=0.1)
    with pytest.raises(ValueError, match='early_layers must be in'):
        BEiTV2Neck(early_layers=13, backbone_layers=12)


def test_bf16_autocast_on_cpu():
    model = build(v2=True)
    d = model.data_preprocessor(batch(), True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(**d, mode='loss')
    assert all(torch.isfinite(v) for v in out.values())
    assert out['loss_1'].dtype == torch.float32  # the head's CE runs on fp32 logits


def test_masked_positions_gathered_without_boolean_indexing_equal_it():
    """Equal counts per row (v2's exact masks): the preprocessor counts them on the host
    and the loss gathers the masked positions by a stable sort, with the same values in
    the same order as ``x[mask]``; unequal counts fall back to ``x[mask]``."""
    from mmbeit.models.algorithms import BEiT
    model = build(v2=True)
    d = model.data_preprocessor(batch(b=3), True)
    assert d['num_masked'] == 8
    x = torch.randn(3, 16, 5)
    assert torch.equal(BEiT.masked_selector(d['mask'], 8)(x), x[d['mask']])
    assert torch.equal(BEiT.masked_selector(d['mask'], 8)(x[..., 0]), x[..., 0][d['mask']])
    with_count = model(**d, mode='loss')
    without = model(**dict(d, num_masked=None), mode='loss')
    for key in with_count:
        assert torch.equal(with_count[key], without[key]), key
    uneven = batch(b=2)
    uneven['inputs'][2][0][:] = False
    uneven['inputs'][2][0][:3] = True
    assert model.data_preprocessor(uneven, True)['num_masked'] is None
