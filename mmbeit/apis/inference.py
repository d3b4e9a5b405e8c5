"""Single-image inference: build a model from a config and a checkpoint, then classify,
segment or run a detector on one image with the config's own test pipeline.

* :func:`init_model` reads a config (path or :class:`~mmengine.config.Config`), turns
  ``SyncBN`` into ``BN`` (inference is one process), builds the model in the config's
  default scope and loads a checkpoint through :mod:`mmbeit.checkpoint`: weights-only, and
  strictly (a missing, unexpected or wrongly shaped key is a
  :class:`~mmbeit.checkpoint.CheckpointMismatchError` naming the keys; the policy is in
  docs/checkpoints.md). A ``Pretrained`` ``init_cfg`` of the
  backbone is dropped when a checkpoint is given: the whole model comes from the
  checkpoint, so the pretraining file need not exist, and ``init_weights`` is not called.
* :func:`inference_classifier` (mmpretrain classifiers), :func:`inference_segmentor`
  (mmseg segmentors) and :func:`inference_detector` (mmdet detectors: Mask R-CNN, Faster
  R-CNN, ...) run ``test_dataloader.dataset.pipeline`` on one image (a file path, or an
  ``H x W x 3`` uint8 array in **BGR** order, as mmcv / OpenCV read images), then the
  model's data preprocessor and ``model(..., mode='predict')`` under ``torch.no_grad``.
  The pipeline's steps are built in the scope of the test dataset (its ``_scope_``, e.g.
  ``'mmdet'`` for mmdet's ``CocoDataset``) as the dataset itself would build them.

Class names (``model.dataset_meta['classes']``) come from the checkpoint's
``meta.dataset_meta`` when it has them, else from the config's
``test_dataloader.dataset.metainfo.classes`` (a tuple of names, or a path to a text file
with one name per line), else from the dataset class's ``METAINFO``.
"""
import copy
import os
import os.path as osp
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope

from mmbeit.checkpoint import (
    CheckpointMismatchError,
    load_state_dict_checked,
    read_checkpoint,
    unwrap_state_dict,
)
from mmbeit.engine.runtime import replace_sync_bn

__all__ = ['init_model', 'inference_classifier', 'inference_segmentor',
           'inference_detector', 'model_task', 'CheckpointMismatchError']

ImageInput = Union[str, os.PathLike, np.ndarray]


# ----------------------------------------------------------------------------- config

def _read_config(config: Union[str, os.PathLike, Config],
                 cfg_options: Optional[dict]) -> Config:
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not osp.isfile(path):
            raise FileNotFoundError(f'config file {path!r} does not exist: give the path of '
                                    f'a config under configs/ (or your own)')
        cfg = Config.fromfile(path)
    elif isinstance(config, Config):
        cfg = copy.deepcopy(config)  # the caller's config is not changed
    else:
        raise TypeError(f'config must be a file path or an mmengine Config, got '
                        f'{type(config).__name__}')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('model') is None:
        raise ValueError(f'config {_cfg_name(cfg)} defines no `model`; inference needs one')
    return cfg


def _cfg_name(cfg: Config) -> str:
    return repr(cfg.filename) if getattr(cfg, 'filename', None) else '(given as a Config)'


def _test_dataset_cfg(cfg: Config) -> Optional[dict]:
    """The dataset config of ``test_dataloader``, looking inside dataset wrappers
    (``RepeatDataset``, ``ClassBalancedDataset``, ...: ``dataset=dict(...)``)."""
    loader = cfg.get('test_dataloader')
    dataset = loader.get('dataset') if isinstance(loader, dict) else None
    while isinstance(dataset, dict) and 'pipeline' not in dataset and isinstance(
            dataset.get('dataset'), dict):
        dataset = dataset['dataset']
    return dataset if isinstance(dataset, dict) else None


def _test_pipeline_cfg(cfg: Config) -> List[dict]:
    dataset = _test_dataset_cfg(cfg)
    pipeline = dataset.get('pipeline') if dataset is not None else None
    if not pipeline or not isinstance(pipeline, (list, tuple)):
        raise ValueError(
            f'config {_cfg_name(cfg)} has no test_dataloader.dataset.pipeline; inference runs '
            f'the test pipeline on the image. Add test_dataloader = dict(dataset=dict('
            f'pipeline=[...])) to the config (e.g. inherit a configs/_base_/datasets/ file), '
            f'or set it with cfg_options / --cfg-options.')
    return [copy.deepcopy(dict(step)) for step in pipeline]


def _is_pretraining(cfg: Config) -> bool:
    """A masked-image-modeling config (``BEiT`` with a target generator): it predicts no
    classes or maps, so it needs no test pipeline (tools that load it, e.g.
    visualize_mim.py and export_checkpoint.py, build their own inputs)."""
    model = cfg.get('model')
    return isinstance(model, dict) and 'target_generator' in model


def _drop_pretrained(init_cfg: Any) -> Any:
    """``init_cfg`` without its ``Pretrained`` entries (None when nothing is left)."""
    def is_pretrained(c):
        return isinstance(c, dict) and c.get('type') == 'Pretrained'
    if is_pretrained(init_cfg):
        return None
    if isinstance(init_cfg, (list, tuple)):
        kept = [c for c in init_cfg if not is_pretrained(c)]
        return kept or None
    return init_cfg


# ----------------------------------------------------------------------------- classes

def _classes_from_value(value: Any, cfg: Config) -> Optional[tuple]:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = osp.expanduser(os.fspath(value))
        candidates = [path]
        data_root = (_test_dataset_cfg(cfg) or {}).get('data_root')
        if not osp.isabs(path) and data_root:
            candidates.append(osp.join(data_root, path))
        found = next((p for p in candidates if osp.isfile(p)), None)
        if found is None:
            warnings.warn(
                f'class names file {path!r} (test_dataloader.dataset.metainfo.classes of '
                f'config {_cfg_name(cfg)}) does not exist; predictions carry class ids '
                f'only. Point it at your classes.txt, e.g. --cfg-options '
                f'test_dataloader.dataset.metainfo.classes=PATH', stacklevel=3)
            return None
        with open(found, encoding='utf-8') as f:
            return tuple(line.strip() for line in f if line.strip())
    return tuple(str(c) for c in value)


def _classes_from_dataset_class(cfg: Config, scope: str) -> Optional[tuple]:
    dataset = _test_dataset_cfg(cfg)
    if dataset is None or not dataset.get('type'):
        return None
    from mmbeit.registry import DATASETS
    try:
        with DefaultScope.overwrite_default_scope(dataset.get('_scope_', scope)):
            cls = DATASETS.get(dataset['type'])
    except Exception:  # noqa: BLE001 - an unknown dataset only means no class names
        return None
    classes = getattr(cls, 'METAINFO', {}).get('classes') if cls is not None else None
    return tuple(classes) if classes else None


def _dataset_meta(checkpoint: Optional[dict], cfg: Config, scope: str) -> dict:
    meta = {}
    saved = (checkpoint or {}).get('meta') or {}
    saved = saved.get('dataset_meta') if isinstance(saved, dict) else None
    if isinstance(saved, dict) and saved.get('classes'):
        meta = dict(saved)
        meta['classes'] = tuple(saved['classes'])
        return meta
    dataset = _test_dataset_cfg(cfg) or {}
    metainfo = dataset.get('metainfo') or {}
    classes = _classes_from_value(metainfo.get('classes'), cfg)
    if classes is None and not metainfo.get('classes'):
        classes = _classes_from_dataset_class(cfg, scope)
    meta['classes'] = classes
    if metainfo.get('palette') is not None:
        meta['palette'] = [tuple(c) for c in metainfo['palette']]
    return meta


def _num_classes(model: nn.Module) -> Optional[int]:
    heads = [getattr(model, name, None) for name in ('head', 'decode_head', 'bbox_head')]
    roi_head = getattr(model, 'roi_head', None)  # two-stage detectors: the box head counts
    heads.append(getattr(roi_head, 'bbox_head', None) if roi_head is not None else None)
    for head in heads:
        if head is not None:
            n = getattr(head, 'num_classes', None) or getattr(head, 'out_channels', None)
            if isinstance(n, int):
                return n
    return None


# ----------------------------------------------------------------------------- model

def init_model(config: Union[str, os.PathLike, Config],
               checkpoint: Optional[str] = None,
               device: Union[str, torch.device] = 'cpu',
               cfg_options: Optional[dict] = None) -> nn.Module:
    """Build the model of ``config`` for inference and load ``checkpoint`` into it.

    Args:
        config: a config file path or an mmengine ``Config`` (copied, not changed).
        checkpoint: a checkpoint file of the whole model (``state_dict`` and optionally
            ``meta.dataset_meta``), loaded strictly and weights-only. ``None``: the model
            keeps the weights of ``init_weights()`` (random, or the backbone's
            ``Pretrained`` init_cfg).
        device: where the model runs (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...).
        cfg_options: overrides merged into the config (as ``--cfg-options``).

    Returns:
        The model in eval mode on ``device`` with ``model.cfg`` (the config used) and
        ``model.dataset_meta`` (``{'classes': tuple | None, ...}``).

    Raises:
        FileNotFoundError: the config or the checkpoint file does not exist.
        ValueError: the config has no model, or no ``test_dataloader.dataset.pipeline``
            (pretraining configs need none: they have no predictions to infer).

    A pretraining model's tokenizer is kept out of its checkpoints and loads its own file
    in ``init_weights()``, which this function skips when given a checkpoint: call
    ``model.target_generator.init_weights()`` to use the tokenizer.
        CheckpointMismatchError: the checkpoint's keys or shapes differ from the model's.
    """
    cfg = _read_config(config, cfg_options)
    if not _is_pretraining(cfg):
        _test_pipeline_cfg(cfg)  # fail now, not at the first image
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if not osp.isfile(osp.expanduser(checkpoint)):
            raise FileNotFoundError(
                f'checkpoint file {checkpoint!r} does not exist: give the .pth file of a '
                f'trained model (e.g. work_dirs/<run>/iter_N.pth), or no checkpoint for '
                f'a model with initial weights')

    replace_sync_bn(cfg.model)  # one process: SyncBN cannot run, BN computes the same
    if checkpoint is not None:
        # The checkpoint holds the whole model; the backbone's pretraining file is not
        # read (it need not exist here).
        backbone = cfg.model.get('backbone')
        if isinstance(backbone, dict) and 'init_cfg' in backbone:
            backbone['init_cfg'] = _drop_pretrained(backbone['init_cfg'])
        if 'init_cfg' in cfg.model:
            cfg.model['init_cfg'] = _drop_pretrained(cfg.model['init_cfg'])
        if cfg.model.get('pretrained') is not None:  # mmseg's older way to name weights
            cfg.model['pretrained'] = None

    import mmbeit.engine  # noqa: F401  (fills mmbeit's registries)
    import mmbeit.models  # noqa: F401
    from mmbeit.engine.config_checks import check_model_config
    from mmbeit.registry import MODELS
    scope = cfg.get('default_scope', 'mmbeit')
    check_model_config(cfg.model, MODELS, scope)  # a misspelt key names path and class
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)

    ckpt = None
    if checkpoint is None:
        model.init_weights()
    else:
        ckpt = read_checkpoint(checkpoint, map_location='cpu')
        load_state_dict_checked(
            model, unwrap_state_dict(ckpt)[0], source=repr(checkpoint), log=False,
            hint=f'(model of config {_cfg_name(cfg)}.) Use the config the checkpoint was '
            f'trained with; a checkpoint of another codebase needs '
            f'tools/model_converters/convert_checkpoint.py first.')

    model.cfg = cfg
    model.dataset_meta = _dataset_meta(ckpt, cfg, scope)
    classes, n = model.dataset_meta.get('classes'), _num_classes(model)
    if classes is not None and n is not None and len(classes) != n:
        warnings.warn(f'{len(classes)} class names for a model with {n} classes '
                      f'(config {_cfg_name(cfg)}); names may not match predictions',
                      stacklevel=2)
    model.to(device)
    model.eval()
    return model


def model_task(model: nn.Module) -> str:
    """``'detection'`` for mmdet detectors (subclasses of
    ``mmdet.models.detectors.BaseDetector``), ``'segmentation'`` for segmentors (mmseg
    ``EncoderDecoder`` and anything with a ``decode_head``), else ``'classification'``."""
    # A detector's class comes from mmdet.models.detectors.base: when that module was never
    # imported, the model cannot be one (and importing mmdet.models here would cost seconds).
    det_base = sys.modules.get('mmdet.models.detectors.base')
    if det_base is not None and isinstance(model, det_base.BaseDetector):
        return 'detection'
    if hasattr(model, 'decode_head'):
        return 'segmentation'
    try:
        from mmseg.models.segmentors import BaseSegmentor
        if isinstance(model, BaseSegmentor):
            return 'segmentation'
    except ImportError:  # pragma: no cover - mmseg is part of the stack
        pass
    return 'classification'


_HELPERS = {'classification': 'inference_classifier', 'segmentation': 'inference_segmentor',
            'detection': 'inference_detector'}


def _check_task(model: nn.Module, wanted: str) -> None:
    task = model_task(model)
    if task != wanted:
        raise TypeError(f'{type(model).__name__} is not a {wanted} model: use '
                        f'{_HELPERS[task]} (it is a {task} model)')


# ----------------------------------------------------------------------------- pipeline

def _step_name(step: dict) -> str:
    kind = step.get('type', '')
    return kind.rsplit('.', 1)[-1] if isinstance(kind, str) else getattr(kind, '__name__', '')


def _build_pipeline(model: nn.Module, from_array: bool,
                    drop: Sequence[str] = ()) -> Compose:
    """The config's test pipeline for this kind of input, built once per model."""
    cfg = getattr(model, 'cfg', None)
    if not isinstance(cfg, (Config, ConfigDict, dict)):
        raise ValueError('model has no `cfg`: build it with mmbeit.apis.init_model')
    key = (id(cfg), from_array, tuple(drop))
    cache = model.__dict__.setdefault('_inference_pipelines', {})
    if key not in cache:
        cache[key] = _compose(cfg, from_array, drop)
    return cache[key]


def _compose(cfg, from_array: bool, drop: Sequence[str]) -> Compose:
    steps = [s for s in _test_pipeline_cfg(cfg)
             if not any(_step_name(s).startswith(d) for d in drop)]
    if from_array and steps and _step_name(steps[0]).startswith('LoadImageFrom'):
        steps = steps[1:]   # the array is the loaded image
    import mmbeit.datasets  # noqa: F401  (fills mmbeit's TRANSFORMS)
    from mmbeit.registry import TRANSFORMS

    # The dataset builds its pipeline in its own scope (mmdet's CocoDataset has
    # _scope_='mmdet', so a bare 'Resize' is mmdet's, which also scales boxes and masks).
    scope = (_test_dataset_cfg(cfg) or {}).get('_scope_') or cfg.get('default_scope', 'mmbeit')
    with DefaultScope.overwrite_default_scope(scope):
        return Compose([TRANSFORMS.build(s) for s in steps])


def _first_input(img: ImageInput) -> dict:
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f'an image array must be H x W x 3 uint8 in BGR order, got '
                             f'shape {img.shape} dtype {img.dtype}; convert it with e.g. '
                             f'cv2.cvtColor, or pass the file path')
        arr = np.ascontiguousarray(img)
        return dict(img=arr.copy(), img_shape=arr.shape[:2], ori_shape=arr.shape[:2])
    if isinstance(img, (str, os.PathLike)):
        path = os.fspath(img)
        if not osp.isfile(path):
            raise FileNotFoundError(f'image file {path!r} does not exist')
        return dict(img_path=path)
    raise TypeError(f'img must be an image file path or an H x W x 3 uint8 BGR array, got '
                    f'{type(img).__name__}')


def _predict(model: nn.Module, img: ImageInput, drop: Sequence[str] = ()) -> Any:
    results = _first_input(img)
    pipeline = _build_pipeline(model, from_array='img' in results, drop=drop)
    data = pipeline(results)
    batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
    with torch.no_grad():
        batch = model.data_preprocessor(batch, False)
        return model(**batch, mode='predict')[0]


# ----------------------------------------------------------------------------- tasks

def inference_classifier(model: nn.Module, img: ImageInput) -> Dict[str, Any]:
    """Classify one image with a model from :func:`init_model`.

    Args:
        model: a classifier (mmpretrain ``ImageClassifier`` or alike) from
            :func:`init_model`.
        img: an image file path, or an ``H x W x 3`` uint8 numpy array in **BGR** channel
            order (as ``cv2.imread`` / ``mmcv.imread`` return it; reverse the last axis of
            an RGB array first). The config's test pipeline runs on it; for an array the
            leading ``LoadImageFromFile`` step is skipped.

    Returns:
        ``dict(pred_label=int, pred_score=float, pred_scores=np.ndarray float32
        [num_classes], pred_class=str | None)`` (``pred_class`` is None when the model has
        no class names).
    """
    _check_task(model, 'classification')
    sample = _predict(model, img)
    scores = sample.pred_score.detach().float().cpu().numpy().astype(np.float32)
    label = int(sample.pred_label.reshape(-1)[0]) if 'pred_label' in sample else int(
        scores.argmax())
    classes = (getattr(model, 'dataset_meta', None) or {}).get('classes')
    return dict(pred_label=label, pred_score=float(scores[label]), pred_scores=scores,
                pred_class=str(classes[label]) if classes and label < len(classes) else None)


def inference_segmentor(model: nn.Module, img: ImageInput) -> np.ndarray:
    """Segment one image with a model from :func:`init_model`.

    Args:
        model: a segmentor (mmseg ``EncoderDecoder`` or alike) from :func:`init_model`.
        img: an image file path, or an ``H x W x 3`` uint8 numpy array in **BGR** channel
            order (as ``cv2.imread`` / ``mmcv.imread`` return it). The config's test
            pipeline runs on it without its ``LoadAnnotations`` steps (there is no ground
            truth), and for an array without the leading ``LoadImageFromFile`` step.

    Returns:
        ``np.ndarray`` int64 ``[H, W]``: a class id per pixel at the original image size.
    """
    _check_task(model, 'segmentation')
    sample = _predict(model, img, drop=('LoadAnnotations', ))
    seg = sample.pred_sem_seg.data.detach().cpu().numpy()
    seg = seg.reshape(seg.shape[-2:]).astype(np.int64)
    ori = tuple(int(s) for s in sample.metainfo['ori_shape'][:2])
    if seg.shape != ori:
        raise RuntimeError(f'the segmentor returned a {seg.shape} map for an image of '
                           f'{ori}: its predict() does not resize to the original size')
    return seg


def inference_detector(model: nn.Module, img: ImageInput) -> Dict[str, Any]:
    """Detect objects (and their masks) in one image with a model from :func:`init_model`.

    Args:
        model: an mmdet detector (``MaskRCNN``, ``FasterRCNN``, ...) from :func:`init_model`.
        img: an image file path, or an ``H x W x 3`` uint8 numpy array in **BGR** channel
            order (as ``cv2.imread`` / ``mmcv.imread`` return it). The config's test
            pipeline runs on it without its ``LoadAnnotations`` steps, and for an array
            without the leading ``LoadImageFromFile`` step.

    Returns:
        ``dict(boxes, labels, scores, masks)`` for the detections the model's ``test_cfg``
        keeps (its ``score_thr`` and ``max_per_img``), sorted by score, highest first:

        * ``boxes``: float32 ``[N, 4]``, ``(x1, y1, x2, y2)`` in pixels of the ORIGINAL
          image (the resize of the test pipeline undone by the detector's
          ``predict(rescale=True)``), clipped to the image. (mmdet's ``Pad`` transform
          reports its padded canvas as the image's shape, so boxes would be clipped to the
          canvas: mmbeit's detection configs pad in the data preprocessor instead,
          ``pad_size_divisor``, which keeps the image's own shape.)
        * ``labels``: int64 ``[N]``, class ids (``model.dataset_meta['classes'][id]``);
        * ``scores``: float32 ``[N]``;
        * ``masks``: bool ``[N, H, W]`` at the original image size, or ``None`` for a
          detector without a mask head.
    """
    _check_task(model, 'detection')
    sample = _predict(model, img, drop=('LoadAnnotations', ))
    pred = sample.pred_instances
    scores = pred.scores.detach().float().cpu().numpy().astype(np.float32).reshape(-1)
    boxes = pred.bboxes.detach().float().cpu().numpy().astype(np.float32).reshape(-1, 4)
    labels = pred.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)
    order = np.argsort(-scores, kind='stable')
    masks = None
    if 'masks' in pred:
        masks = pred.masks
        masks = masks.detach().cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks)
        ori = tuple(int(s) for s in sample.metainfo['ori_shape'][:2])
        if masks.shape != (len(scores), ) + ori:
            raise RuntimeError(f'the detector returned masks of shape {masks.shape} for '
                               f'{len(scores)} detections on an image of {ori}: its '
                               f'predict() does not paste masks at the original size')
        masks = masks.astype(bool)[order]
    return dict(boxes=boxes[order], labels=labels[order], scores=scores[order], masks=masks)
