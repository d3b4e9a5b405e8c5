"""Detection through the tools (issue 17): a tiny Mask R-CNN with mmbeit's BEiTViT (the
demo scratch config, batch 2, 4 iterations, no validation) trains on the demo COCO data
with tools/train.py in bf16 mixed precision (``--amp bf16``: mmbeit.MaskRCNN keeps the heads
in fp32, tests/test_models/test_mask_rcnn_amp.py) and writes a checkpoint; tools/test.py
on it reports box and mask AP (mmdet's CocoMetric); tools/infer.py lists its detections
and writes an overlay.

Training and testing run in fresh processes (one each, sharing the checkpoint through a
module fixture); infer.py runs in this process (its report is compared with
inference_detector on the same checkpoint).
"""
import re

import cv2
import numpy as np
import pytest
from _helpers import ROOT, cli_options, run_tool, tool_main
from PIL import Image

from mmbeit.checkpoint import read_checkpoint

DET_CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py'
INFER = f'{ROOT}/tools/infer.py'
CLASSES = ('circle', 'square', 'triangle', 'cross', 'ring', 'diamond', 'bar', 'star')
# a barely trained detector scores about 1/9 per class: with test_cfg's 0.05 it still
# outputs detections, but keep them all so CocoMetric never sees an empty result
TEST_OPTIONS = {'model.test_cfg.rcnn.score_thr': 0.0}

pytestmark = [pytest.mark.slow,  # about 35 s: a training run and a test run (processes)
              pytest.mark.usefixtures('one_thread')]


def data_options(coco):
    loader = dict(num_workers=0, persistent_workers=False)
    return {
        'train_dataloader': dict(loader, batch_size=2),
        'train_dataloader.dataset.data_root': f'{coco}/',
        'test_dataloader': loader,
        'test_dataloader.dataset.data_root': f'{coco}/',
        'test_evaluator.ann_file': f'{coco}/annotations/instances_val.json',
    }


@pytest.fixture(scope='module')
def trained(tmp_path_factory, demo_data):
    """4 iterations of the demo detector at batch 2 (fewer RoIs than the config, to be
    quick); returns the checkpoint tools/train.py wrote."""
    work = tmp_path_factory.mktemp('det') / 'work'
    options = {**data_options(f'{demo_data}/coco'), 'train_cfg.max_iters': 4,
               'randomness.seed': 0, 'default_hooks.logger.interval': 1,
               'model.train_cfg.rpn_proposal.max_per_img': 64,
               'model.train_cfg.rcnn.sampler.num': 32}
    res = run_tool(['tools/train.py', DET_CFG, '--work-dir', work, '--no-validate',
                    '--amp', 'bf16', '--cfg-options', *cli_options(options)])
    log = res.stdout + res.stderr
    assert 'Iter(train) [4/4]' in log and 'loss_mask' in log and 'loss_rpn_cls' in log
    assert "type='MixedPrecisionOptimWrapper'" in log and "dtype='bfloat16'" in log
    return work / 'iter_4.pth'


def test_train_writes_a_detector_checkpoint(trained):
    ckpt = read_checkpoint(trained)
    state = ckpt['state_dict']
    # mmbeit's backbone with windowed blocks (8 x 8 windows: 15 x 15 + 3 table rows) and
    # global ones (the 16 x 16 grid: 31 x 31 + 3), the ViTDet pyramid, mmdet's heads
    assert state['backbone.blocks.0.attn.relative_position_bias_table'].shape == (228, 4)
    assert state['backbone.blocks.1.attn.relative_position_bias_table'].shape == (964, 4)
    assert any(k.startswith('neck.') for k in state)
    assert state['roi_head.bbox_head.fc_cls.weight'].shape == (9, 256)  # 8 classes + bg
    assert state['roi_head.mask_head.conv_logits.weight'].shape[0] == 8
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == CLASSES


def test_test_tool_reports_box_and_mask_ap(trained, demo_data, tmp_path):
    res = run_tool(['tools/test.py', DET_CFG, trained, '--work-dir', tmp_path / 'ev',
                    '--cfg-options', *cli_options({**data_options(f'{demo_data}/coco'),
                                                   **TEST_OPTIONS})])
    log = res.stdout + res.stderr
    found = {k: float(v) for k, v in re.findall(r'coco/((?:bbox|segm)_mAP(?:_\w+)?): '
                                                 r'(-?[\d.]+)', log)}
    for kind in ('bbox', 'segm'):
        for key in ('mAP', 'mAP_50', 'mAP_75'):
            assert 0.0 <= found[f'{kind}_{key}'] <= 1.0, (kind, key, found)
    # the numbers are CocoMetric's evaluation of the 4 val images (its COCO summary)
    assert 'Evaluate annotation type *bbox*' in log and 'Evaluate annotation type *segm*' in log
    assert 'Iter(test) [4/4]' in log and 'results of the whole dataset is empty' not in log


def test_infer_tool_lists_detections_and_writes_the_overlay(trained, demo_data, tmp_path,
                                                             capsys):
    from mmbeit.apis import inference_detector, init_model
    from mmbeit.visualization import overlay_detections
    img = f'{demo_data}/coco/val/000000000001.png'
    out_png = tmp_path / 'det.png'
    assert tool_main(INFER, DET_CFG, trained, img, '--out', out_png,
                     '--score-thr', '0.05') == ''
    out = capsys.readouterr().out
    assert 'model: MaskRCNN (detection)' in out and f'overlay written to {out_png}' in out

    model = init_model(DET_CFG, trained)
    dets = inference_detector(model, img)
    keep = dets['scores'] >= 0.05
    assert keep.any()
    assert f'detections: {keep.sum()} with score >= 0.05 (of {len(keep)}' in out
    rows = [ln.split() for ln in out.splitlines() if re.match(r'\d+ ', ln)]
    assert len(rows) == keep.sum()
    for row, label, score, box in zip(rows, dets['labels'][keep], dets['scores'][keep],
                                      dets['boxes'][keep]):
        assert row[1] == CLASSES[label] and float(row[2]) == pytest.approx(score, abs=1e-4)
        np.testing.assert_allclose([float(v) for v in row[3:]], box, atol=0.051)
    # the overlay: the image with those detections drawn, in the dataset's class colours
    want = overlay_detections(cv2.imread(img)[..., ::-1].copy(), dets, classes=CLASSES,
                              palette=np.asarray(model.dataset_meta['palette'], np.uint8),
                              score_thr=0.05)
    np.testing.assert_array_equal(np.asarray(Image.open(out_png).convert('RGB')), want)
    assert '--overwrite' in tool_main(INFER, DET_CFG, trained, img, '--out', out_png)
    assert '--score-thr must be in [0, 1], got 1.5' in tool_main(
        INFER, DET_CFG, trained, img, '--score-thr', '1.5')
