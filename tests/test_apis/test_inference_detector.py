"""Detection inference (mmbeit.apis.init_model / inference_detector) and detection
overlays (mmbeit.visualization.det_overlay), on the tiny demo Mask R-CNN
(configs/demo/beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py) with random weights.

The detector's output is checked against mmdet's own ``predict`` on an input prepared by
hand (OpenCV resize, padding with the mean pixel, RGB + normalisation, the metainfo
written out), with and without mmdet's rescaling, for a non-square image that the test
pipeline shrinks and pads to 128 x 128. Overlays are checked pixel by pixel on detections
written here.
"""
import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from _helpers import ROOT
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

from mmbeit.apis import (
    CheckpointMismatchError,
    inference_classifier,
    inference_detector,
    inference_segmentor,
    init_model,
    model_task,
)
from mmbeit.visualization import (
    detection_label,
    overlay_detections,
    save_det_overlay,
    seg_palette,
)

pytestmark = pytest.mark.usefixtures('one_thread')

DET_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py'
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
CLASSES = ('circle', 'square', 'triangle', 'cross', 'ring', 'diamond', 'bar', 'star')


@pytest.fixture(scope='module')
def det_ckpt(tmp_path_factory):
    """The demo detector built without init_model, seeded, saved as a runner would
    (state_dict + meta.dataset_meta with reversed class names, to tell them from the
    config's)."""
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    cfg = Config.fromfile(DET_CFG)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    model.init_weights()
    path = tmp_path_factory.mktemp('det') / 'det.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': CLASSES[::-1]}}}, path)
    return path


@pytest.fixture(scope='module')
def detector(det_ckpt):
    return init_model(DET_CFG, det_ckpt)


@pytest.fixture(scope='module')
def wide_image(demo_data):
    """A 100 x 256 BGR crop of two demo images side by side: the pipeline resizes it to
    50 x 128 and pads it to 128 x 128."""
    val = f'{demo_data}/coco/val'
    left, right = (cv2.imread(f'{val}/00000000000{i}.png') for i in (1, 2))
    return np.ascontiguousarray(np.concatenate([left, right], axis=1)[:100])


def by_hand_input(bgr):
    """The test pipeline and the data preprocessor, written out: keep-ratio resize to fit
    128 (bilinear, sizes rounded), RGB, normalised, then padded at the bottom / right to
    128 x 128 with 0 (the mean pixel); the metainfo: img_shape is the resized image."""
    h, w = bgr.shape[:2]
    s = 128 / max(h, w)
    nw, nh = int(w * s + 0.5), int(h * s + 0.5)
    small = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    small = torch.from_numpy(small[..., ::-1].copy()).permute(2, 0, 1).float()
    x = torch.zeros(3, 128, 128)
    x[:, :nh, :nw] = (small - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    meta = dict(img_shape=(nh, nw), ori_shape=(h, w), scale_factor=(nw / w, nh / h),
                batch_input_shape=(128, 128), pad_shape=(128, 128))
    return x[None], meta


def mmdet_predict(model, x, meta, rescale):
    from mmdet.structures import DetDataSample
    sample = DetDataSample()
    sample.set_metainfo(meta)
    with torch.no_grad():
        return model.predict(x, [sample], rescale=rescale)[0].pred_instances


# ----------------------------------------------------------------------------- init_model

def test_init_model_builds_the_detector(detector, det_ckpt):
    assert type(detector).__name__ == 'MaskRCNN' and model_task(detector) == 'detection'
    assert not detector.training
    assert detector.dataset_meta['classes'] == CLASSES[::-1]  # the checkpoint's names
    # without names in the checkpoint: the config's CocoDataset metainfo
    from mmbeit.checkpoint import read_checkpoint
    bare = det_ckpt.parent / 'bare.pth'
    torch.save({'state_dict': read_checkpoint(det_ckpt)['state_dict']}, bare)
    assert init_model(DET_CFG, bare).dataset_meta['classes'] == CLASSES


def test_init_model_refuses_a_checkpoint_without_the_mask_head(det_ckpt):
    """A file that does not fit (here: no mask head) is an error naming the keys, not a
    detector with a random mask head."""
    from mmbeit.checkpoint import read_checkpoint
    state = {k: v for k, v in read_checkpoint(det_ckpt)['state_dict'].items()
             if not k.startswith('roi_head.mask_head.')}
    torch.save({'state_dict': state}, det_ckpt.parent / 'no_mask.pth')
    with pytest.raises(CheckpointMismatchError, match=r'16 missing .*'
                                                       r'\[roi_head\.mask_head\.convs\.0'):
        init_model(DET_CFG, det_ckpt.parent / 'no_mask.pth')


# ----------------------------------------------------------------------------- inference

def test_detector_matches_mmdet_predict_on_a_non_square_image(detector, wide_image, tmp_path):
    dets = inference_detector(detector, wide_image)
    n = len(dets['scores'])
    assert n > 0  # random weights still give detections above test_cfg's score_thr 0.05
    assert dets['boxes'].shape == (n, 4) and dets['boxes'].dtype == np.float32
    assert dets['labels'].shape == (n, ) and dets['labels'].dtype == np.int64
    assert dets['scores'].dtype == np.float32 and np.all(np.diff(dets['scores']) <= 0)
    assert dets['masks'].shape == (n, 100, 256) and dets['masks'].dtype == bool
    assert 0 <= dets['labels'].min() and dets['labels'].max() < 8

    x, meta = by_hand_input(wide_image)
    assert meta['img_shape'] == (50, 128) and meta['scale_factor'] == (0.5, 0.5)
    ref = mmdet_predict(detector, x, meta, rescale=True)
    order = np.argsort(-ref.scores.numpy(), kind='stable')
    np.testing.assert_array_equal(dets['scores'], ref.scores.numpy()[order])
    np.testing.assert_array_equal(dets['labels'], ref.labels.numpy()[order])
    np.testing.assert_allclose(dets['boxes'], ref.bboxes.numpy()[order], atol=1e-4)
    np.testing.assert_array_equal(dets['masks'], ref.masks.numpy()[order])
    # the boxes of the 128 px network input, scaled by hand to the original pixels
    net = mmdet_predict(detector, x, meta, rescale=False)
    np.testing.assert_allclose(dets['boxes'], net.bboxes.numpy()[order] / 0.5, atol=1e-4)
    # inside the original 100 x 256 image, and beyond the 128 px input: not left unscaled
    b = dets['boxes']
    assert b.min() >= 0 and b[:, [0, 2]].max() <= 256 and b[:, [1, 3]].max() <= 100
    assert b[:, 2].max() > 160 and np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])

    # the same image from a file: the same detections
    path = str(tmp_path / 'wide.png')
    cv2.imwrite(path, wide_image)
    from_file = inference_detector(detector, path)
    for key in ('boxes', 'labels', 'scores', 'masks'):
        np.testing.assert_array_equal(from_file[key], dets[key])


def test_a_box_only_detector_returns_no_masks(wide_image):
    model = init_model(DET_CFG, None, cfg_options={
        'model.type': 'FasterRCNN', 'model.roi_head.mask_roi_extractor': None,
        'model.roi_head.mask_head': None})
    assert type(model).__name__ == 'FasterRCNN' and model_task(model) == 'detection'
    dets = inference_detector(model, wide_image)
    assert dets['masks'] is None and dets['boxes'].shape == (len(dets['scores']), 4)
    assert dets['boxes'][:, [1, 3]].max() <= 100  # clipped to the image, not the canvas


def test_each_helper_refuses_the_other_tasks(detector):
    class FakeSegmentor(nn.Module):
        decode_head = None

    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(TypeError, match='Linear is not a detection model: use '
                                        'inference_classifier'):
        inference_detector(nn.Linear(2, 2), img)
    with pytest.raises(TypeError, match='not a detection model: use inference_segmentor'):
        inference_detector(FakeSegmentor(), img)
    with pytest.raises(TypeError, match='MaskRCNN is not a segmentation model: use '
                                        'inference_detector'):
        inference_segmentor(detector, img)
    with pytest.raises(TypeError, match='not a classification model: use inference_detector'):
        inference_classifier(detector, img)
    with pytest.raises(ValueError, match='H x W x 3 uint8 in BGR order'):
        inference_detector(detector, np.zeros((32, 32), np.uint8))


# ----------------------------------------------------------------------------- overlays

def _image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)


def _dets():
    """Three detections: class 2 (0.9) and class 5 (0.6) overlap in x 30..39; class 2
    again at 0.1, below the default threshold."""
    masks = np.zeros((3, 90, 120), bool)
    masks[0, 30:50, 10:40] = True
    masks[1, 30:50, 30:60] = True
    masks[2, 74:86, 84:106] = True
    return dict(boxes=np.array([[10, 30, 39, 49], [30, 30, 59, 49], [80, 70, 110, 88]],
                               np.float32),
                labels=np.array([2, 5, 2]), scores=np.array([0.9, 0.6, 0.1], np.float32),
                masks=masks)


def _blend(pixels, colour, a=0.5):
    return np.clip(np.rint((1 - a) * pixels.astype(np.float64) + a * np.asarray(
        colour, np.float64)), 0, 255).astype(np.uint8)


def test_overlay_draws_masks_boxes_and_tags_exactly():
    img, dets = _image(), _dets()
    pal = seg_palette(8)
    out = overlay_detections(img, dets, classes=CLASSES)
    # mask interiors, away from outlines: blended once with the class colour; where the
    # masks overlap the higher score (class 2) is blended last, on top of class 5
    np.testing.assert_array_equal(out[35:45, 12:28], _blend(img[35:45, 12:28], pal[2]))
    np.testing.assert_array_equal(out[35:45, 42:58], _blend(img[35:45, 42:58], pal[5]))
    np.testing.assert_array_equal(out[35:45, 31:38],
                                  _blend(_blend(img[35:45, 31:38], pal[5]), pal[2]))
    # outlines in the class colour: class 2's left edge, class 5's right edge
    assert (out[31:49, 10] == pal[2]).all() and (out[31:49, 59] == pal[5]).all()
    # the tags sit above the boxes (rows < 30), filled with the class colour
    assert (out[18:30, 10:40] == pal[2]).all(axis=-1).sum() > 50
    # below the threshold: not drawn; far from every detection: the image
    np.testing.assert_array_equal(out[52:, :], img[52:, :])
    np.testing.assert_array_equal(out[:16, :], img[:16, :])
    # a lower threshold draws the third one, in class 2's colour (one colour per class)
    low = overlay_detections(img, dets, classes=CLASSES, score_thr=0.05)
    assert (low[88, 81:110] == pal[2]).all()
    np.testing.assert_array_equal(low[76:84, 86:104], _blend(img[76:84, 86:104], pal[2]))
    assert detection_label(2, 0.9, CLASSES) == 'triangle 0.90'
    assert detection_label(9, 0.125) == 'class 9 0.12'


def test_overlay_without_masks_and_with_nothing_to_draw():
    img, dets = _image(), _dets()
    boxes_only = dict(dets, masks=None)
    out = overlay_detections(img, boxes_only, score_thr=0.5)
    np.testing.assert_array_equal(out[35:45, 12:28], img[35:45, 12:28])  # no mask fill
    assert (out[31:49, 10] == seg_palette(8)[2]).all()
    np.testing.assert_array_equal(overlay_detections(img, dets, score_thr=0.95), img)


def test_overlay_errors():
    img, dets = _image(), _dets()
    with pytest.raises(ValueError, match=r'masks have shape \(3, 90, 120\), expected '
                                         r'\(3, 50, 120\)'):
        overlay_detections(img[:50], dets)
    with pytest.raises(ValueError, match=r'boxes \[N, 4\], labels \[N\] and scores \[N\]'):
        overlay_detections(img, dict(dets, scores=dets['scores'][:2]))
    with pytest.raises(ValueError, match='palette has 4 colours'):
        overlay_detections(img, dets, palette=seg_palette(4))
    with pytest.raises(ValueError, match='dict with boxes, labels, scores'):
        overlay_detections(img, [1, 2, 3])


def test_save_det_overlay_png(tmp_path):
    bgr = _image()
    dets = _dets()
    out = tmp_path / 'sub' / 'det.png'
    assert save_det_overlay(bgr, dets, out, classes=CLASSES) == str(out)
    saved = np.asarray(Image.open(out).convert('RGB'))
    np.testing.assert_array_equal(saved, overlay_detections(bgr[..., ::-1].copy(), dets,
                                                            classes=CLASSES))
    with pytest.raises(FileExistsError, match='overwrite=True'):
        save_det_overlay(bgr, dets, out)
    save_det_overlay(bgr, dets, out, score_thr=0.95, overwrite=True)
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert('RGB')), bgr[..., ::-1])
    with pytest.raises(ValueError, match='must name a .png file'):
        save_det_overlay(bgr, dets, tmp_path / 'det.jpg')
    assert sorted(p.name for p in out.parent.iterdir()) == ['det.png']  # no temporary left
