"""Single-image inference (mmbeit.apis), segmentation overlays (mmbeit.visualization) and
tools/infer.py, on the two demo configs made tiny and checkpoints written here.

Predictions are checked against computations that do not use the inference code: the
classifier against PIL preprocessing + backbone + head by hand, the segmentor against
``model.inference`` on a tensor normalised by hand.
"""
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from _helpers import ROOT, cli_options, tool_main
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

from mmbeit.apis import (
    CheckpointMismatchError,
    inference_classifier,
    inference_segmentor,
    init_model,
    model_task,
)
from mmbeit.engine.runtime import replace_sync_bn
from mmbeit.visualization import overlay_segmentation, save_seg_overlay, seg_palette

pytestmark = pytest.mark.usefixtures('one_thread')

CLS_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py'
SEG_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py'
INFER = f'{ROOT}/tools/infer.py'
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]

CLS_TINY = {
    'model.backbone.arch': dict(embed_dims=32, num_layers=2, num_heads=2,
                                feedforward_channels=64),
    'model.head.in_channels': 32,
}
# Feature2Pyramid takes four feature maps and BEiTViT returns one per distinct out index,
# so the segmentation backbone keeps four (narrow) layers.
SEG_TINY = {
    'model.backbone.arch': dict(embed_dims=32, num_layers=4, num_heads=2,
                                feedforward_channels=64),
    'model.neck.embed_dim': 32,
    'model.decode_head.in_channels': [32, 32, 32, 32],
    'model.decode_head.channels': 32,
    'model.auxiliary_head.in_channels': 32,
    'model.auxiliary_head.channels': 16,
}


def cls_options(data):
    return {**CLS_TINY, 'test_dataloader.dataset.data_root': f'{data}/imagenet',
            'test_dataloader.dataset.metainfo.classes': f'{data}/imagenet/meta/classes.txt'}


def seg_options(data):
    return {**SEG_TINY, 'test_dataloader.dataset.data_root': f'{data}/ade20k'}


def build_and_save(config, options, path, meta, scale=None):
    """Build the model of a config independently of init_model, initialise it, make its
    predictions decisive (``scale``: name of a weight re-drawn with std 1), and save it
    as a runner would (state_dict + meta)."""
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    replace_sync_bn(cfg.model)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    model.init_weights()
    torch.manual_seed(0)
    if scale is not None:
        nn.init.normal_(model.get_parameter(scale), std=1.0)
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, path)
    return path


@pytest.fixture(scope='module')
def classes_cls(demo_data):
    with open(f'{demo_data}/imagenet/meta/classes.txt') as f:
        return tuple(line.strip() for line in f if line.strip())


@pytest.fixture(scope='module')
def cls_ckpt(tmp_path_factory, demo_data, classes_cls):
    path = tmp_path_factory.mktemp('cls') / 'cls.pth'
    return build_and_save(CLS_CFG, cls_options(demo_data), path,
                          {'dataset_meta': {'classes': classes_cls}}, scale='head.fc.weight')


@pytest.fixture(scope='module')
def seg_ckpt(tmp_path_factory, demo_data):
    path = tmp_path_factory.mktemp('seg') / 'seg.pth'
    return build_and_save(SEG_CFG, seg_options(demo_data), path, {},
                          scale='decode_head.conv_seg.weight')


@pytest.fixture(scope='module')
def classifier(cls_ckpt, demo_data):
    return init_model(CLS_CFG, cls_ckpt, cfg_options=cls_options(demo_data))


@pytest.fixture(scope='module')
def segmentor(seg_ckpt, demo_data):
    return init_model(SEG_CFG, seg_ckpt, cfg_options=seg_options(demo_data))


def val_image(data, name='circle'):
    return f'{data}/imagenet/val/{name}/{name}_0000.png'


def seg_image(data):
    return f'{data}/ade20k/images/validation/ADE_val_00000001.jpg'


# ----------------------------------------------------------------------------- classifier

def reference_scores(model, path):
    """Resize the short edge to 73 (bicubic), centre-crop 64, normalise, run backbone and
    head by hand."""
    im = Image.open(path).convert('RGB')
    w, h = im.size
    size = (73, round(73 * h / w)) if w <= h else (round(73 * w / h), 73)
    im = im.resize(size, Image.BICUBIC)
    top, left = (im.height - 64) // 2, (im.width - 64) // 2
    arr = np.asarray(im, dtype=np.float32)[top:top + 64, left:left + 64]
    x = (torch.from_numpy(arr) - torch.tensor(MEAN)) / torch.tensor(STD)
    x = x.permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        logits = model.head.fc(model.head.pre_logits(model.backbone(x)))
    return logits.softmax(-1)[0].numpy()


def test_classifier_matches_a_computation_by_hand(classifier, demo_data, classes_cls):
    assert model_task(classifier) == 'classification'
    assert classifier.dataset_meta['classes'] == classes_cls
    for name in ('circle', 'ring', 'star'):
        path = val_image(demo_data, name)
        res = inference_classifier(classifier, path)
        ref = reference_scores(classifier, path)
        assert res['pred_scores'].dtype == np.float32 and res['pred_scores'].shape == (8, )
        np.testing.assert_allclose(res['pred_scores'], ref, atol=1e-5, rtol=0)
        assert res['pred_label'] == int(ref.argmax())
        assert res['pred_score'] == pytest.approx(float(ref.max()), abs=1e-5)
        assert res['pred_class'] == classes_cls[res['pred_label']]
        # the same image as a BGR array (mmcv's convention) gives the same scores
        bgr = np.asarray(Image.open(path).convert('RGB'))[..., ::-1].copy()
        same = inference_classifier(classifier, bgr)
        np.testing.assert_allclose(same['pred_scores'], res['pred_scores'], atol=1e-6)
        assert same['pred_label'] == res['pred_label']
    # the scaled head makes predictions decisive: a real test of the preprocessing
    assert max(inference_classifier(classifier, val_image(demo_data))['pred_scores']) > 0.3


def test_classifier_rejects_bad_images(classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.png'):
        inference_classifier(classifier, str(tmp_path / 'nope.png'))
    with pytest.raises(ValueError, match=r'H x W x 3 uint8 in BGR.*\(64, 64\)'):
        inference_classifier(classifier, np.zeros((64, 64), np.uint8))
    with pytest.raises(TypeError, match='not a segmentation model: use inference_classifier'):
        inference_segmentor(classifier, np.zeros((64, 64, 3), np.uint8))


def test_class_names_from_the_config_when_the_checkpoint_has_none(tmp_path, demo_data,
                                                                  cls_ckpt, classes_cls):
    bare = tmp_path / 'bare.pth'
    torch.save({'state_dict': torch.load(cls_ckpt, weights_only=True)['state_dict']}, bare)
    # a classes.txt path (as in the demo config)
    model = init_model(CLS_CFG, bare, cfg_options=cls_options(demo_data))
    assert model.dataset_meta['classes'] == classes_cls
    # a tuple of names
    names = tuple(f'c{i}' for i in range(8))
    opts = {**cls_options(demo_data), 'test_dataloader.dataset.metainfo.classes': names}
    model = init_model(CLS_CFG, bare, cfg_options=opts)
    res = inference_classifier(model, val_image(demo_data))
    assert res['pred_class'] == names[res['pred_label']]


# ----------------------------------------------------------------------------- segmentor

def test_segmentor_matches_model_inference(segmentor, demo_data):
    assert model_task(segmentor) == 'segmentation'
    path = seg_image(demo_data)
    seg = inference_segmentor(segmentor, path)
    assert seg.shape == (128, 128) and seg.dtype == np.int64
    assert 0 <= seg.min() and seg.max() < 8
    assert len(np.unique(seg)) > 1   # the re-drawn classifier weights give varied maps

    # by hand: OpenCV reads BGR, RGB + normalise, one 128-px window, argmax
    bgr = cv2.imread(path)
    x = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float()
    x = ((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))[None]
    meta = dict(img_shape=(128, 128), ori_shape=(128, 128), pad_shape=(128, 128),
                padding_size=[0, 0, 0, 0])
    with torch.no_grad():
        logits = segmentor.inference(x, [meta])
    assert logits.shape == (1, 8, 128, 128)
    np.testing.assert_array_equal(seg, logits.argmax(1)[0].numpy())

    # the image as a BGR array gives the same map
    np.testing.assert_array_equal(inference_segmentor(segmentor, bgr), seg)


def test_segmentor_returns_the_original_size(segmentor, demo_data):
    img = cv2.imread(seg_image(demo_data))
    crop = np.ascontiguousarray(np.concatenate([img, img], axis=1)[:100, :150])
    # 100 x 150 -> resized to 128 x 192: two overlapping 128-px windows
    seg = inference_segmentor(segmentor, crop)
    assert seg.shape == (100, 150) and seg.dtype == np.int64
    assert 0 <= seg.min() and seg.max() < 8
    # a wide strip, 40 x 200 -> 102 x 512: windows lower than the crop (a smaller patch
    # grid than the backbone's own)
    strip = np.ascontiguousarray(np.concatenate([img] * 2, axis=1)[:40, :200])
    seg = inference_segmentor(segmentor, strip)
    assert seg.shape == (40, 200) and 0 <= seg.min() and seg.max() < 8


def test_syncbn_becomes_bn(segmentor):
    norms = [m for m in segmentor.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in segmentor.modules())
    assert segmentor.dataset_meta['classes'][:2] == ('wall', 'floor')


def test_a_config_object_is_not_changed(seg_ckpt, demo_data):
    cfg = Config.fromfile(SEG_CFG)
    cfg.merge_from_dict(seg_options(demo_data))
    init_model(cfg, seg_ckpt)
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'


# ----------------------------------------------------------------------------- init_model

def test_init_model_errors(tmp_path, demo_data, seg_ckpt):
    missing = tmp_path / 'missing.pth'
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        init_model(SEG_CFG, missing, cfg_options=seg_options(demo_data))
    with pytest.raises(FileNotFoundError, match='config file .*nope.py'):
        init_model(str(tmp_path / 'nope.py'), seg_ckpt)

    # strict: a checkpoint without one of the model's keys is refused
    ckpt = torch.load(seg_ckpt, weights_only=True)
    del ckpt['state_dict']['decode_head.conv_seg.bias']
    torch.save(ckpt, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointMismatchError,
                       match=r'(?s)partial\.pth.*decode_head\.conv_seg\.bias'):
        init_model(SEG_CFG, tmp_path / 'partial.pth', cfg_options=seg_options(demo_data))
    # ... so is one with a wrongly shaped tensor, named with both shapes
    ckpt = torch.load(seg_ckpt, weights_only=True)
    weight = ckpt['state_dict']['decode_head.conv_seg.weight']
    ckpt['state_dict']['decode_head.conv_seg.weight'] = weight[:1]
    torch.save(ckpt, tmp_path / 'shape.pth')
    with pytest.raises(CheckpointMismatchError,
                       match=r'(?s)shape\.pth.*1 of another shape.*decode_head\.conv_seg\.weight '
                             + re.escape(f'{[1] + list(weight.shape[1:])} in the file, '
                                         f'{list(weight.shape)} in the model')):
        init_model(SEG_CFG, tmp_path / 'shape.pth', cfg_options=seg_options(demo_data))
    # a truncated file is named
    data = open(seg_ckpt, 'rb').read()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.pth.*truncated"):
        init_model(SEG_CFG, tmp_path / 'cut.pth', cfg_options=seg_options(demo_data))

    # a misspelt model key names its path, the class and the close name
    with pytest.raises(TypeError, match=r"model\.backbone\.out_indeces: BEiTViT .*did you mean "
                                        r"'out_indices'"):
        init_model(SEG_CFG, seg_ckpt, cfg_options={**seg_options(demo_data),
                                                   'model.backbone.out_indeces': [3]})

    # no test pipeline
    cfg = Config.fromfile(SEG_CFG)
    cfg.merge_from_dict(SEG_TINY)
    cfg.test_dataloader = None
    with pytest.raises(ValueError, match='test_dataloader.dataset.pipeline'):
        init_model(cfg, seg_ckpt)


def test_a_pretraining_config_needs_no_test_pipeline(tmp_path):
    """A pretraining config has no test pipeline (it predicts no classes or maps) and
    loads; its tokenizer, kept out of the checkpoint, stays as built until its own
    init_weights() reads its file (docs of init_model)."""
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py'))
    assert cfg.get('test_dataloader') is None
    built = init_model(cfg)
    ckpt = tmp_path / 'pre.pth'
    torch.save({'state_dict': built.state_dict()}, ckpt)
    assert not any(k.startswith('target_generator.') for k in built.state_dict())
    model = init_model(cfg, ckpt)
    assert type(model).__name__ == 'BEiT'
    for key, value in model.state_dict().items():
        assert torch.equal(value, built.state_dict()[key]), key


def test_a_pretrained_backbone_file_is_not_needed_with_a_checkpoint(seg_ckpt, demo_data):
    opts = {**seg_options(demo_data), 'model.backbone.init_cfg': dict(
        type='Pretrained', checkpoint='/nowhere/beit_pretrained.pth', prefix='backbone.')}
    model = init_model(SEG_CFG, seg_ckpt, cfg_options=opts)
    saved = torch.load(seg_ckpt, weights_only=True)['state_dict']
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


# ----------------------------------------------------------------------------- overlay

def test_palette_is_distinct_and_deterministic():
    pal = seg_palette(150)
    assert pal.shape == (150, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == 150
    np.testing.assert_array_equal(pal, seg_palette(150))
    np.testing.assert_array_equal(seg_palette(8), pal[:8])
    assert not np.array_equal(seg_palette(8, seed=1), seg_palette(8))
    # past the hue walk's distinct colours (about 7000) the lattice fills in: it used to
    # loop forever at 8192 (a DALL-E vocabulary)
    big = seg_palette(8192)
    assert len({tuple(c) for c in big}) == 8192
    np.testing.assert_array_equal(big[:150], pal)


def test_overlay_blends_exactly():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    seg = rng.integers(0, 5, (20, 30))
    seg[:4] = 255
    pal = seg_palette(5)
    for a in (0.5, 0.3):
        out = overlay_segmentation(img, seg, pal, opacity=a)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out[:4], img[:4])   # ignored pixels keep the image
        for y, x in [(4, 0), (10, 7), (19, 29), (12, 20)]:
            k = seg[y, x]
            want = [round((1 - a) * int(img[y, x, c]) + a * int(pal[k, c])) for c in range(3)]
            assert out[y, x].tolist() == want
    with pytest.raises(ValueError, match=r'\(20, 31\).*\(20, 30\)'):
        overlay_segmentation(img, np.zeros((20, 31), np.int64))
    with pytest.raises(ValueError, match='palette has 3 colours'):
        overlay_segmentation(img, seg, pal[:3])


def test_save_overlay_png(tmp_path):
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    seg = np.zeros((40, 50), np.int64)
    seg[10:, 20:] = 3
    seg[:5] = 255
    out = tmp_path / 'sub' / 'overlay.png'
    save_seg_overlay(bgr, seg, out, classes=['a', 'b', 'c', 'd'])
    png = np.asarray(Image.open(out).convert('RGB'))
    assert png.shape[0] == 40 and png.shape[1] > 50        # image + legend strip
    want = overlay_segmentation(bgr[..., ::-1].copy(), seg, seg_palette(4))
    np.testing.assert_array_equal(png[:, :50], want)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match='overlay.png.*overwrite=True'):
        save_seg_overlay(bgr, np.full((40, 50), 1), out)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ['overlay.png']   # no temp files
    save_seg_overlay(bgr, np.full((40, 50), 1), out, overwrite=True)
    assert out.read_bytes() != before
    with pytest.raises(ValueError, match=r'\(40, 50\).*\(30, 50\)'):
        save_seg_overlay(bgr[:30], seg, tmp_path / 'bad.png')
    assert not (tmp_path / 'bad.png').exists()


# ----------------------------------------------------------------------------- tools/infer.py

def test_infer_tool_classification(cls_ckpt, classifier, demo_data, capsys):
    img = val_image(demo_data, 'ring')
    top = inference_classifier(classifier, img)['pred_class']
    assert tool_main(INFER, CLS_CFG, cls_ckpt, img, '--topk', '3', '--cfg-options',
                     *cli_options(CLS_TINY)) == ''
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln[:1].isdigit()]
    assert len(rows) == 3 and rows[0][:2] == ['1', top]


def test_infer_tool_segmentation(seg_ckpt, demo_data, tmp_path, capsys):
    img, out_png = seg_image(demo_data), tmp_path / 'overlay.png'
    args = (INFER, SEG_CFG, seg_ckpt, img, '--out', out_png, '--cfg-options',
            *cli_options(SEG_TINY))
    assert tool_main(*args) == ''
    out = capsys.readouterr().out
    assert 'fraction' in out and 'overlay written' in out
    assert np.asarray(Image.open(out_png)).shape[0] == 128
    assert '--overwrite' in tool_main(*args)
    missing = tool_main(INFER, SEG_CFG, seg_ckpt, tmp_path / 'none.jpg')
    assert 'image file' in missing and 'none.jpg' in missing
    missing = tool_main(INFER, SEG_CFG, tmp_path / 'none.pth', img)
    assert 'checkpoint file' in missing and 'none.pth' in missing
    assert osp.isfile(out_png)
