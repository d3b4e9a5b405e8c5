"""mmbeit.MaskRCNN under mixed precision (issue 17): mmcv 2.1's NMS and RoIAlign have no
bf16 kernels, so mmdet's MaskRCNN cannot train under bf16 autocast (``--amp``); mmbeit's
runs the backbone and pyramid in bf16 and the heads in fp32, and without autocast it is
mmdet's model, output for output. The demo scratch config's model (a tiny ViT at 128 px),
on a synthetic batch of two images with two boxes and masks each."""
import copy
import functools
import inspect

import numpy as np
import pytest
import torch
from _helpers import ROOT, run_tool
from mmengine.config import Config
from mmengine.registry import DefaultScope

CFG = f'{ROOT}/configs/demo/beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py'

pytestmark = pytest.mark.usefixtures('one_thread')


@functools.lru_cache(maxsize=None)
def model_cfg():
    cfg = Config.fromfile(CFG)
    return cfg.default_scope, cfg.model


def build(detector_type=None):
    """The config's detector (``detector_type``: another registered name, e.g. mmdet's
    'MaskRCNN'), with the same weights for every call (seed 0)."""
    from mmbeit.registry import MODELS
    scope, model = model_cfg()
    model = copy.deepcopy(model)
    if detector_type is not None:
        model.type = detector_type
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(model)


def batch():
    """Preprocessed inputs [2, 3, 128, 128] and data samples with two instances each."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    inputs = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    samples = []
    for i in range(2):
        sample = DetDataSample(metainfo=dict(
            img_shape=(128, 128), ori_shape=(128, 128), pad_shape=(128, 128),
            batch_input_shape=(128, 128), scale_factor=(1.0, 1.0)))
        boxes = torch.tensor([[10., 12., 60., 70.], [70. - 20 * i, 20., 120., 90.]])
        masks = np.zeros((2, 128, 128), np.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1:y2, x1:x2] = 1
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([1, 3 + i]),
                                           masks=BitmapMasks(masks, 128, 128))
        samples.append(sample)
    return inputs, samples


def seeded_loss(model, inputs, samples):
    """Each loss as one tensor (the RPN's come per pyramid level)."""
    torch.manual_seed(2)  # drop path, the RPN's and the RoI head's samplers
    return {k: sum(v) if isinstance(v, list) else v
            for k, v in model.loss(inputs, samples).items()}


def test_without_autocast_it_is_mmdets_mask_rcnn():
    from mmdet.models.detectors import MaskRCNN as MMDetMaskRCNN
    ours, theirs = build(), build('MaskRCNN')
    assert type(ours).__module__ == 'mmbeit.models.detectors.mask_rcnn'
    assert type(theirs) is MMDetMaskRCNN and isinstance(ours, MMDetMaskRCNN)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    inputs, samples = batch()
    ours_loss = seeded_loss(ours, inputs, samples)
    theirs_loss = seeded_loss(theirs, inputs, samples)
    assert ours_loss.keys() == theirs_loss.keys() and 'loss_mask' in ours_loss
    for k in ours_loss:
        torch.testing.assert_close(ours_loss[k], theirs_loss[k], rtol=0, atol=0)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        a, b = (m.predict(inputs, copy.deepcopy(samples))[0].pred_instances
                for m in (ours, theirs))
    assert len(a) > 0
    for k in ('bboxes', 'scores', 'labels', 'masks'):
        assert torch.equal(a[k], b[k]), k


def record_dtypes(model):
    """Output dtype of the patch embedding, the pyramid's first level, the RPN head and the
    box and mask heads, filled in by forward hooks."""
    seen = {}

    def hook(name):
        def fn(module, args, out):
            first = out
            while isinstance(first, (tuple, list)):
                first = first[0]
            seen.setdefault(name, first.dtype)
        return fn
    parts = dict(patch_embed=model.backbone.patch_embed.proj,
                 neck=model.neck.stages[0], rpn_head=model.rpn_head,
                 bbox_head=model.roi_head.bbox_head, mask_head=model.roi_head.mask_head)
    for name, module in parts.items():
        module.register_forward_hook(hook(name))
    return seen


def test_under_bf16_autocast_the_backbone_runs_in_bf16_and_the_heads_in_fp32():
    model = build()
    seen = record_dtypes(model)
    inputs, samples = batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = seeded_loss(model, inputs, samples)
        # the ambient autocast is back on once the detector returns
        assert torch.is_autocast_enabled('cpu')
        assert torch.get_autocast_dtype('cpu') == torch.bfloat16
    assert seen == dict(patch_embed=torch.bfloat16, neck=torch.bfloat16,
                        rpn_head=torch.float32, bbox_head=torch.float32,
                        mask_head=torch.float32)
    total = sum(v.sum() for k, v in losses.items() if 'loss' in k)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()  # gradients reach the backbone through the fp32 cast
    grad = model.backbone.patch_embed.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the bf16 losses are close to the fp32 ones of the same model and batch
    fp32 = seeded_loss(model, inputs, samples)
    for k in ('loss_rpn_cls', 'loss_cls', 'loss_mask'):
        torch.testing.assert_close(losses[k], fp32[k], rtol=0.05, atol=0.02)
    model.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        pred = model.predict(inputs, samples)[0].pred_instances
    assert len(pred) > 0 and pred.bboxes.dtype == pred.scores.dtype == torch.float32


def test_mmdets_mask_rcnn_cannot_train_under_bf16_autocast():
    """Why the class exists: the same model as mmdet's class stops at mmcv's NMS. Should
    an mmcv update add bf16 kernels, this fails and mmbeit.MaskRCNN can be reconsidered."""
    model = build('MaskRCNN')
    inputs, samples = batch()
    with torch.autocast('cpu', dtype=torch.bfloat16), \
            pytest.raises(RuntimeError, match='expected scalar type Float but found BFloat16'):
        seeded_loss(model, inputs, samples)


def test_the_registry_builds_it_without_mmbeit_models_importing_mmdet():
    """``import mmbeit.models`` (every run) leaves mmdet unimported; building
    ``mmbeit.MaskRCNN`` imports the class then (a fresh process)."""
    code = ('import sys, mmbeit.models; from mmbeit.registry import MODELS; '
            'print(any(m.startswith("mmdet") for m in sys.modules)); '
            'builder = MODELS.get("MaskRCNN"); print(builder.__module__, builder.__name__); '
            'from mmengine.config import Config; from mmengine.registry import DefaultScope; '
            f'cfg = Config.fromfile({CFG!r}); '
            'DefaultScope.get_instance("t", scope_name="mmbeit"); '
            'model = MODELS.build(cfg.model); t = type(model); '
            'print(t.__module__, t.__name__, [c.__module__ for c in t.__mro__[1:3]])')
    out = run_tool(['-c', code]).stdout.splitlines()
    assert out[-3:] == [
        'False', 'mmbeit.models.detectors build_mask_rcnn',
        "mmbeit.models.detectors.mask_rcnn MaskRCNN ['mmbeit.models.detectors.mask_rcnn', "
        "'mmdet.models.detectors.mask_rcnn']"]


def test_the_builder_takes_exactly_the_classs_arguments():
    """The registered builder spells out MaskRCNN's arguments (so the config key check
    can name a misspelt key); an mmdet update that changes them fails here."""
    from mmbeit.models.detectors import build_mask_rcnn
    from mmbeit.models.detectors.mask_rcnn import MaskRCNN
    ours = inspect.signature(build_mask_rcnn).parameters
    theirs = list(inspect.signature(MaskRCNN.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in ours.values()] == \
        [(p.name, p.default) for p in theirs]
