"""mmbeit/visualization/mim_panels.py: every panel of the MIM picture against an independent
computation (plain backbone / head / tokenizer calls, the mask generator's own draw), the
BEiT ``mim_logits`` method against the training loss, and the errors of bad inputs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _fake_dall_e import TINY_DEC, TINY_ENC
from _helpers import ROOT
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmbeit.datasets  # noqa: F401  (registers the transforms)
import mmbeit.models  # noqa: F401
from mmbeit.datasets import BlockwiseMaskGenerator
from mmbeit.datasets.transforms import BEiTMaskedViews
from mmbeit.registry import MODELS
from mmbeit.visualization import (
    build_pretraining_steps,
    centre_views,
    draw_mim_panels,
    find_pretraining_steps,
    mim_panels,
    panel_names,
    seeded_mask,
    token_palette,
)

DEMO_V2 = f'{ROOT}/configs/demo/beitv2_vit-tiny-p8_vqkd-demo_30e_demo-64.py'
DEMO_CLS = f'{ROOT}/configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py'
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)

pytestmark = pytest.mark.usefixtures('one_thread')


def _discriminating_head(model):
    with torch.no_grad():  # a head whose argmax varies, so predictions are right and wrong
        model.head.lm_head.weight.normal_(0, 1)
        model.head.lm_head.bias.normal_(0, 1)
    return model.eval()


@pytest.fixture(scope='module')
def v2():
    """The BEiT v2 demo model (random VQ-KD tokenizer, 8 x 8 grid; 8 codes instead of 512,
    so that a random head gets some tokens right) with its config's views and mask
    generator."""
    cfg = Config.fromfile(DEMO_V2)
    cfg.merge_from_dict({'model.head.vocab_size': 8,
                         'model.target_generator.quantizer.num_tokens': 8})
    with DefaultScope.overwrite_default_scope('mmbeit'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
    views, generator, patch = build_pretraining_steps(cfg)
    return _discriminating_head(model), views, generator, patch


@pytest.fixture(scope='module')
def v1():
    """A tiny BEiT v1 with a tiny DALL-E dVAE (encoder and decoder, 32 codes, 8 x 8 grid)."""
    arch = dict(embed_dims=32, num_layers=2, num_heads=4, feedforward_channels=64)
    cfg = dict(
        type='BEiT',
        backbone=dict(type='BEiTViT', arch=arch, img_size=64, patch_size=8,
                      use_mask_token=True, final_norm=True, rel_pos_bias='shared',
                      out_type='raw'),
        head=dict(type='MIMHead', in_channels=32, vocab_size=32),
        target_generator=dict(type='DALLETokenizer', encoder=TINY_ENC, with_decoder=True,
                              decoder=TINY_DEC, input_size=64),
        data_preprocessor=dict(type='MIMDataPreprocessor', patch_size=8))
    with DefaultScope.overwrite_default_scope('mmbeit'):
        torch.manual_seed(1)
        model = MODELS.build(cfg)
        model.init_weights()
    views = BEiTMaskedViews(img_size=64, target_size=64, target_interpolation='lanczos')
    generator = BlockwiseMaskGenerator(mask_ratio=0.4, min_num_patches=4, exact=False)
    return _discriminating_head(model), views, generator


def photo(h, w, seed=0):
    """A smooth random photo-like image (so the tokens vary) of any size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(rng.uniform(3, 12) * x + rng.uniform(0, 6)) * np.cos(
        rng.uniform(3, 12) * y) for _ in range(3)]
    img = (np.stack(chans, -1) * 100 + 128 + rng.normal(0, 12, (h, w, 3)))
    return np.clip(img, 0, 255).astype(np.uint8)


def independent(model, panels):
    """Targets, the head's logits and the attention maps, from the panels' views and mask
    with plain calls: normalise by hand, the backbone's forward (final norm), lm_head."""
    view = torch.from_numpy(panels['view']).permute(2, 0, 1)[None].float()
    target_view = torch.from_numpy(panels['target_view']).permute(2, 0, 1)[None].float()
    x = (view - MEAN) / STD
    mask = torch.from_numpy(panels['mask'].reshape(1, -1))
    with torch.no_grad():
        target = model.target_generator.tokenize(target_view / 255)[0]
        states = model.backbone(x, mask)[0]                    # final-normed [1, N+1, D]
        logits = model.head.lm_head(states[:, 1:])[0]          # [N, K]
        maps = model.backbone.get_attention_maps(x)
    return x, target_view / 255, mask, target, logits, maps


# ----------------------------------------------------------------------------- views


@pytest.mark.parametrize('shape, box', [((90, 151), (0, 30, 90, 90)),   # wide: full height
                                        ((151, 77), (37, 0, 77, 77)),   # tall: full width
                                        ((40, 40), (0, 0, 40, 40))])    # smaller than view
def test_centre_views_is_the_centred_box_resized(v2, shape, box):
    _, views, _, _ = v2
    img = photo(*shape)
    top, left, h, w = box
    view, target = centre_views(img, views)
    ref_view, ref_target = views.resize(img[top:top + h, left:left + w])
    assert view.shape == (64, 64, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(view, ref_view)
    np.testing.assert_array_equal(target, ref_target)
    again, _ = centre_views(img, views)   # no randomness: the same photo, the same views
    np.testing.assert_array_equal(again, view)


def test_seeded_mask_is_the_generators_draw_and_restores_numpy(v2):
    _, _, generator, _ = v2
    np.random.seed(123)
    before = np.random.get_state()
    mask = seeded_mask(generator, (8, 8), 7)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    np.random.seed(7)
    np.testing.assert_array_equal(mask, generator.sample((8, 8)))
    assert mask.sum() == round(0.4 * 64)  # the demo's exact blockwise count


# ----------------------------------------------------------------------------- panels


def test_v2_panels_equal_independent_computation(v2):
    model, views, generator, patch = v2
    img = photo(97, 143, seed=3)
    panels = mim_panels(model, img, generator, views=views, seed=5, layers=(0, -1),
                        heads=(0, 2))
    grid = (8, 8)
    assert patch == 8 and panels['grid'] == grid and panels['vocab_size'] == 8
    np.random.seed(5)
    np.testing.assert_array_equal(panels['mask'], generator.sample(grid).reshape(grid))
    view, _ = centre_views(img, views)
    np.testing.assert_array_equal(panels['view'], view)

    x, target_inputs, mask, target, logits, maps = independent(model, panels)
    m = mask[0]
    np.testing.assert_array_equal(panels['target_tokens'], target.reshape(grid).numpy())
    pred = logits.argmax(-1)
    expect = torch.where(m, pred, torch.full_like(pred, -1)).reshape(grid).numpy()
    np.testing.assert_array_equal(panels['pred_tokens'], expect)
    assert (panels['pred_tokens'][~panels['mask']] == -1).all()
    right = (pred == target)[m]
    np.testing.assert_array_equal(panels['correct'][panels['mask']], right.numpy())
    assert not panels['correct'][~panels['mask']].any()
    assert panels['num_masked'] == int(m.sum()) == 26
    assert panels['accuracy'] == right.sum().item() / right.numel()
    assert 0 < panels['accuracy'] < 1   # some right, some wrong: the comparison bites

    # the masked input: grey at masked patches, the view elsewhere
    cells = np.kron(panels['mask'], np.ones((8, 8), bool))
    assert (panels['masked_view'][cells] == 128).all()
    np.testing.assert_array_equal(panels['masked_view'][~cells], panels['view'][~cells])

    # attention: the cls rows of the chosen heads (each sums to 1), their mean over the heads
    assert panels['layers'] == [0, 3] and panels['heads'] == [0, 2]
    for layer in (0, 3):
        rows = maps[layer][0, [0, 2], 0, :]                     # [2, N + 1]
        torch.testing.assert_close(rows.sum(-1), torch.ones(2))
        np.testing.assert_allclose(panels['attention_cls'][layer], rows.numpy(), atol=1e-6)
        amap = panels['attention'][layer]
        assert amap.shape == grid
        np.testing.assert_allclose(amap, rows[:, 1:].mean(0).reshape(grid).numpy(),
                                   atol=1e-6)
    assert 'recon_target' not in panels   # VQ-KD decodes features, not pixels


def test_mim_logits_are_what_the_loss_scores(v2, v1):
    """``mim_logits`` at masked positions: the cross-entropy and accuracy the training loss
    reports (v2's loss_1 / acc_1, v1's loss / acc)."""
    for model, views, generator in (v2[:3], v1):
        panels = mim_panels(model, photo(80, 100), generator, views=views, seed=2)
        x, target_inputs, mask, target, _, _ = independent(model, panels)
        with torch.no_grad():
            logits = model.mim_logits(x, mask)[0]
            losses = model.loss(x, target_inputs, mask)
        key = 'loss_1' if model.neck is not None else 'loss'
        m = mask[0]
        ce = F.cross_entropy(logits[m], target[m])
        torch.testing.assert_close(ce, losses[key], rtol=1e-5, atol=1e-6)
        acc = losses['acc_1' if model.neck is not None else 'acc'].item()
        assert acc == pytest.approx(100 * panels['accuracy'], abs=1e-4)


def test_dalle_reconstructions_decode_targets_and_predictions(v1):
    model, views, generator = v1
    panels = mim_panels(model, photo(120, 90, seed=4), generator, views=views, seed=0)
    _, _, mask, target, logits, _ = independent(model, panels)
    m = mask[0]
    mixed = torch.where(m, logits.argmax(-1), target)
    tok = model.target_generator

    def decoded(ids):
        with torch.no_grad():
            img = tok.decode(ids[None])[0].permute(1, 2, 0).numpy()
        return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)

    assert panels['recon_target'].shape == (64, 64, 3)
    np.testing.assert_array_equal(panels['recon_target'], decoded(target))
    np.testing.assert_array_equal(panels['recon_pred'], decoded(mixed))
    if (mixed != target).any():   # a wrong prediction shows in the second picture
        assert not np.array_equal(panels['recon_pred'], panels['recon_target'])
    assert panel_names(panels) == ['view', 'mask', 'masked_view', 'target_tokens',
                                   'pred_tokens', 'recon_target', 'recon_pred',
                                   'attention_block2']
    fig = draw_mim_panels(panels, title='t')
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ['input view 64x64', f'mask: {panels["num_masked"]} of 64 patches']
    assert 'dVAE decode: target tokens' in titles
    assert any(t.startswith('predicted at masked: ') and
               f'{100 * panels["accuracy"]:.1f}%' in t for t in titles)


def test_nothing_masked_gives_nan_accuracy(v1):
    model, views, _ = v1

    class NoMask:
        def sample(self, grid):
            return np.zeros(grid[0] * grid[1], bool)

    panels = mim_panels(model, photo(64, 64), NoMask(), views=views)
    assert panels['num_masked'] == 0 and math.isnan(panels['accuracy'])
    assert (panels['pred_tokens'] == -1).all()


@pytest.mark.parametrize('vocab', [1, 8, 64, 512, 8192])
def test_token_palette_is_fixed_and_distinct(vocab):
    pal = token_palette(vocab)
    assert pal.shape == (vocab, 3) and pal.dtype == np.uint8
    assert len(np.unique(pal, axis=0)) == vocab        # one colour per id
    np.testing.assert_array_equal(pal, token_palette(vocab))
    if vocab > 1:
        assert pal.min() >= 20 and pal.max() <= 235


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_are_named(v2):
    model, views, generator, _ = v2
    img = photo(64, 64)
    with pytest.raises(ValueError, match=r'attention layer 4 is out of range: the backbone has '
                       r'4 blocks \(0\.\.3, or -1 for the last\)'):
        mim_panels(model, img, generator, views=views, layers=(4, ))
    with pytest.raises(ValueError, match=r'attention heads \[4\]: give head indices in 0\.\.3'):
        mim_panels(model, img, generator, views=views, heads=(4, ))
    with pytest.raises(ValueError, match='image must be an H x W x 3 uint8 RGB array'):
        mim_panels(model, img.astype(np.float32), generator, views=views)
    with pytest.raises(TypeError, match=r"needs a BEiT pretraining model \(mmbeit BEiT: "
                       r"backbone, head, target_generator\), got BEiTViT without 'backbone'"):
        mim_panels(model.backbone, img, generator, views=views)


def test_a_classifier_config_has_no_pretraining_steps():
    cfg = Config.fromfile(DEMO_CLS)
    with pytest.raises(ValueError, match='has no pretraining pipeline with BEiTMaskedViews '
                       'and MIMMask in train_dataloader.dataset'):
        find_pretraining_steps(cfg)
    views, masks = find_pretraining_steps(Config.fromfile(DEMO_V2))
    assert views['img_size'] == 64 and masks['generator']['mask_ratio'] == 0.4
