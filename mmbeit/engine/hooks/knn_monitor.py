"""kNN accuracy of the backbone's features while a (pre)training run goes on.

A masked-image-model loss says little about the features: on the demo it sits at the
token prior for dozens of epochs while the backbone already changes. Self-supervised
toolboxes therefore watch a weighted kNN classifier on a small labelled set (DINO, Caron
et al. 2021, section 4.1 and DINO's ``eval_knn.py``: cosine similarity, k = 20, weights
exp(sim / 0.07)). This hook does that every ``interval`` epochs (or iterations), at the
end of training and optionally before the first iteration:

1. embed the ``bank`` images (a labelled train split) and the ``queries`` (its val split)
   with ``model.backbone`` in eval mode, without gradients
   (:func:`mmbeit.evaluation.extract_features`: the cls token or the mean of the patch
   tokens of one block, the final norm on the last block);
2. classify each query by its k nearest bank features (:func:`mmbeit.evaluation.knn_scores`);
3. log top-1 / top-5 (percent) as ``knn/top1`` / ``knn/top5``: a log line, the message hub
   and the visualizer (``vis_data/scalars.json``, TensorBoard), at ``step`` = the number
   of training iterations done.

Distributed: each rank embeds its own shard of both sets (``DefaultSampler(shuffle=False,
round_up=False)``: every image exactly once over all ranks), the bank shards are gathered
to every rank and put back in dataset order, each rank classifies its queries and the
correct counts are summed, so the numbers equal a single process's on the same data.

Cost: one forward pass over bank + queries per evaluation; the log line prints its seconds
and the cumulative kNN share of the wall time since training started. docs/monitoring.md
has the config for a user's own folder and how to read the numbers.
"""
import copy
import math
import numbers
import time
from typing import Dict, Optional, Sequence

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop, Runner

from mmbeit.evaluation import (
    FEATURE_NAMES,
    FEATURES,
    extract_features,
    knn_scores,
    topk_correct,
)
from mmbeit.models.utils import check_rgb
from mmbeit.registry import HOOKS

__all__ = ['KNNMonitorHook']


@HOOKS.register_module()
class KNNMonitorHook(Hook):
    """Weighted-kNN top-1 / top-5 of the backbone's features on a labelled set.

    Args:
        bank (dict): dataloader config of the labelled memory bank (e.g. the train split
            of an ImageNet-layout folder): ``dataset`` with a deterministic pipeline that
            ends in ``PackInputs`` (resize, center crop: images of one size), and
            ``batch_size``; ``num_workers`` etc. as for any mmengine dataloader. Its
            ``sampler`` is replaced by ``DefaultSampler(shuffle=False, round_up=False)``.
        queries (dict): the same for the query images (e.g. the val split).
        interval (int): evaluate every ``interval`` epochs (``by_epoch=True``) or
            iterations (``by_epoch=False``, the choice for iteration-based loops).
        by_epoch (bool): see ``interval``.
        feature (str): 'cls', 'avg' (mean of the patch tokens) or 'cls_and_avg'.
        layer (int): the backbone block whose output is used (negative from the end;
            the last block gets the backbone's final norm when it has one).
        k (int): neighbours (clipped to the bank size). DINO: 20.
        temperature (float): weight exp(similarity / temperature). DINO: 0.07.
        topk (Sequence[int]): accuracies logged as ``knn/top<t>``.
        mean, std (Sequence[float], optional): per-channel normalisation in 0-255 units,
            in the channel order after ``to_rgb``. Default: the model's
            ``data_preprocessor.mean`` / ``std`` (what the backbone sees in training).
        to_rgb (bool): the loaders give BGR (mmpretrain's ``LoadImageFromFile``); flip to
            RGB before normalising. False when they already give RGB.
        before_train (bool): also evaluate before the first training iteration (step 0:
            the initialisation, the start of the curve).
        chunk_size (int): queries compared with the bank at once (memory bound).
    """
    priority = 'LOW'

    def __init__(self, bank: dict, queries: dict, interval: int = 10, by_epoch: bool = True,
                 feature: str = 'cls', layer: int = -1, k: int = 20,
                 temperature: float = 0.07, topk: Sequence[int] = (1, 5),
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 to_rgb: bool = True, before_train: bool = True, chunk_size: int = 1024):
        for name, cfg in (('bank', bank), ('queries', queries)):
            if not isinstance(cfg, dict) or 'dataset' not in cfg or 'batch_size' not in cfg:
                raise ValueError(f'KNNMonitorHook: {name} must be a dataloader config dict '
                                 f"with 'dataset' and 'batch_size', got {cfg!r}")
        for name, value in (('interval', interval), ('k', k), ('chunk_size', chunk_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f'KNNMonitorHook: {name} must be an integer >= 1, got '
                                 f'{value!r}')
        if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                or not math.isfinite(temperature) or temperature <= 0):
            raise ValueError(f'KNNMonitorHook: temperature must be a number > 0, got '
                             f'{temperature!r}')
        if feature not in FEATURES:
            raise ValueError(f'KNNMonitorHook: feature must be one of {FEATURES}, got '
                             f'{feature!r}')
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ValueError(f'KNNMonitorHook: layer must be an integer block index, got '
                             f'{layer!r}')
        topk = (topk,) if isinstance(topk, numbers.Integral) else tuple(topk)
        if not topk or any(isinstance(t, bool) or not isinstance(t, numbers.Integral)
                           or t < 1 for t in topk):
            raise ValueError(f'KNNMonitorHook: topk must be integers >= 1, e.g. (1, 5), got '
                             f'{topk!r}')
        self.bank_cfg, self.queries_cfg = copy.deepcopy(bank), copy.deepcopy(queries)
        self.interval, self.by_epoch = int(interval), bool(by_epoch)
        self.feature, self.layer, self.k = feature, int(layer), int(k)
        self.temperature, self.topk = float(temperature), tuple(int(t) for t in topk)
        self.mean = None if mean is None else check_rgb(mean, 'mean', 'KNNMonitorHook')
        self.std = None if std is None else check_rgb(std, 'std', 'KNNMonitorHook',
                                                      positive=True)
        self.to_rgb, self.eval_before_train = bool(to_rgb), bool(before_train)
        self.chunk_size = int(chunk_size)
        self._loaders = None
        self._norm = None  # (mean, std) as [1, 3, 1, 1] tensors
        self._last_step = None
        self._knn_seconds = 0.
        self._t0 = None
        #: the latest evaluation: step, bank / query / class counts, correct counts,
        #: results (the logged percentages)
        self.last: Optional[dict] = None

    # -- runner entry points ------------------------------------------------------------
    def before_train(self, runner) -> None:
        if self.by_epoch and isinstance(runner.train_loop, IterBasedTrainLoop):
            raise ValueError('KNNMonitorHook: the train loop is iteration-based; set '
                             'by_epoch=False and give interval in iterations (or leave the '
                             'hook out: custom_hooks = [])')
        backbone = self._backbone(runner)
        num_layers = getattr(backbone, 'num_layers', None)
        if num_layers is not None and not -num_layers <= self.layer < num_layers:
            raise ValueError(f'KNNMonitorHook: layer={self.layer} is out of range for a '
                             f'backbone of {num_layers} blocks')
        self._norm = self._resolve_norm(runner)
        if self._loaders is None:
            self._loaders = (self._build_loader(runner, self.bank_cfg),
                             self._build_loader(runner, self.queries_cfg))
        self._t0 = time.perf_counter()
        self._knn_seconds = 0.
        self._last_step = None
        if self.eval_before_train:
            self._evaluate(runner, runner.iter, runner.epoch, before=True)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.by_epoch and self.every_n_train_iters(runner, self.interval):
            self._evaluate(runner, runner.iter + 1)  # the loop counts this one after hooks

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and self.every_n_epochs(runner, self.interval):
            self._evaluate(runner, runner.iter, runner.epoch + 1)  # epochs done

    def after_train(self, runner) -> None:
        if self._last_step != runner.iter:
            self._evaluate(runner, runner.iter, runner.epoch)

    # -- pieces ---------------------------------------------------------------------------
    @staticmethod
    def _backbone(runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        backbone = getattr(model, 'backbone', None)
        if backbone is None or not callable(getattr(backbone, 'forward_layers', None)):
            raise TypeError(f'KNNMonitorHook: {type(model).__name__} has no '
                            'backbone.forward_layers(x, layers); the hook needs a model '
                            'whose backbone is a ViT like mmbeit BEiTViT (remove the hook '
                            'from custom_hooks otherwise)')
        return backbone

    def _resolve_norm(self, runner):
        mean, std = self.mean, self.std
        if mean is None or std is None:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            pre = getattr(model, 'data_preprocessor', None)
            for name, value in (('mean', mean), ('std', std)):
                if value is None:
                    found = getattr(pre, name, None)
                    if not isinstance(found, torch.Tensor) or found.numel() != 3:
                        raise ValueError(f'KNNMonitorHook: {name}=None, and the model\'s '
                                         f'data_preprocessor has no 3-channel {name}; pass '
                                         f'{name}=[...] (0-255 units) to the hook')
                    if name == 'mean':
                        mean = found.flatten().tolist()
                    else:
                        std = found.flatten().tolist()
        return (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @staticmethod
    def _build_loader(runner, cfg):
        cfg = copy.deepcopy(cfg)
        cfg['sampler'] = dict(type='DefaultSampler', shuffle=False, round_up=False)
        build = getattr(runner, 'build_dataloader', Runner.build_dataloader)
        return build(cfg, seed=getattr(runner, 'seed', None), diff_rank_seed=False)

    def _images(self, inputs, device) -> torch.Tensor:
        if isinstance(inputs, (list, tuple)):
            sizes = {tuple(x.shape) for x in inputs}
            if len(sizes) > 1:
                raise ValueError(f'KNNMonitorHook: images of one batch differ in size '
                                 f'{sorted(sizes)}; end the kNN pipelines with a resize and '
                                 'a center crop to one size')
            inputs = torch.stack(list(inputs))
        mean, std = self._norm
        x = inputs.to(device=device, dtype=torch.float32)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'KNNMonitorHook: expected 3-channel images [B, 3, H, W] from '
                             f'PackInputs, got {list(x.shape)}')
        if self.to_rgb:
            x = x.flip(1)
        return (x - mean.to(device)) / std.to(device)

    def _embed(self, backbone, loader, device):
        """This rank's (features [n, D], labels [n], dataset indices [n])."""
        feats, labels = [], []
        for data in loader:
            x = self._images(data['inputs'], device)
            feats.append(extract_features(backbone, x, self.feature, (self.layer,))[0])
            for s in data['data_samples']:
                label = getattr(s, 'gt_label', None)
                if label is None or torch.as_tensor(label).numel() != 1:
                    raise ValueError('KNNMonitorHook: the kNN images need one class label '
                                     'each (data_sample.gt_label); use a labelled dataset '
                                     '(ImageNet, CustomDataset with class folders) and '
                                     'PackInputs')
                labels.append(int(torch.as_tensor(label).flatten()[0]))
        indices = torch.as_tensor(list(iter(loader.sampler)), dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long)
        if len(labels) != len(indices):
            raise RuntimeError(f'KNNMonitorHook: the loader gave {len(labels)} images for '
                               f'{len(indices)} sampler indices')
        feats = torch.cat(feats) if feats else torch.zeros(0, 0, device=device)
        return feats, labels.to(device), indices.to(device)

    @staticmethod
    def _gather(feats, labels, indices):
        """All ranks' rows in dataset order (shards of different sizes)."""
        if dist.get_world_size() == 1:
            return feats, labels
        device = feats.device
        size = torch.tensor([feats.shape[0], feats.shape[1] if feats.numel() else -1],
                            device=device)
        sizes = dist.all_gather(size)
        rows, dims = max(int(s[0]) for s in sizes), max(int(s[1]) for s in sizes)
        pad = torch.zeros(rows, max(dims, 0), device=device)
        if feats.numel():
            pad[:feats.shape[0]] = feats
        padded = {}
        for name, t in (('labels', labels), ('indices', indices)):
            p = torch.full((rows,), -1, dtype=torch.long, device=device)
            p[:t.shape[0]] = t
            padded[name] = p
        all_f = dist.all_gather(pad)
        all_l, all_i = dist.all_gather(padded['labels']), dist.all_gather(padded['indices'])
        n = [int(s[0]) for s in sizes]
        f = torch.cat([t[:m] for t, m in zip(all_f, n)])
        lab = torch.cat([t[:m] for t, m in zip(all_l, n)])
        idx = torch.cat([t[:m] for t, m in zip(all_i, n)])
        order = torch.argsort(idx)
        return f[order], lab[order]

    def _evaluate(self, runner, step: int, epoch: Optional[int] = None,
                  before: bool = False) -> Dict[str, float]:
        """Evaluate now; ``step``: training iterations done, ``epoch``: epochs done (only
        printed, for epoch-based runs), ``before``: no training iteration ran yet in this
        run (the cost share is not printed then)."""
        start = time.perf_counter()
        backbone = self._backbone(runner)
        device = next(iter(backbone.parameters())).device
        modes = [(m, m.training) for m in backbone.modules()]
        backbone.eval()
        try:
            bank, bank_labels, bank_idx = self._embed(backbone, self._loaders[0], device)
            q_feats, q_labels, _ = self._embed(backbone, self._loaders[1], device)
        finally:
            for m, mode in modes:
                m.train(mode)
        bank, bank_labels = self._gather(bank, bank_labels, bank_idx)
        if bank.shape[0] == 0:
            raise ValueError('KNNMonitorHook: the bank dataset is empty')
        top_label = torch.tensor(
            [max(int(bank_labels.max()), int(q_labels.max()) if q_labels.numel() else -1)],
            device=device)
        dist.all_reduce(top_label, op='max')
        num_classes = int(top_label) + 1
        correct = torch.zeros(len(self.topk) + 1, dtype=torch.long, device=device)
        if q_feats.shape[0]:
            scores = knn_scores(bank, bank_labels, q_feats, num_classes, self.k,
                                self.temperature, self.chunk_size)
            hits = topk_correct(scores, q_labels, self.topk)
            correct[:-1] = torch.tensor([hits[t] for t in self.topk])
        correct[-1] = q_feats.shape[0]
        dist.all_reduce(correct)
        num_queries = int(correct[-1])
        if num_queries == 0:
            raise ValueError('KNNMonitorHook: the queries dataset is empty')
        results = {f'knn/top{t}': 100. * int(c) / num_queries
                   for t, c in zip(self.topk, correct[:-1].tolist())}
        self.last = dict(step=step, bank=bank.shape[0], queries=num_queries,
                         num_classes=num_classes, results=results,
                         correct=dict(zip(self.topk, correct[:-1].tolist())))

        now = time.perf_counter()
        seconds = now - start
        self._knn_seconds += seconds
        elapsed = now - self._t0 if self._t0 is not None else seconds
        self._last_step = step
        for key, value in results.items():
            runner.message_hub.update_scalar(key, value)
        runner.visualizer.add_scalars(results, step=step)
        share = ' (before training)' if before else (
            f' = {100. * self._knn_seconds / max(elapsed, 1e-9):.1f}% of the {elapsed:.0f} s '
            'since training started')
        num_layers = getattr(backbone, 'num_layers', None)
        where = f'{self.layer % num_layers + 1}/{num_layers}' if num_layers else str(self.layer)
        when = f'epoch {epoch}, ' if self.by_epoch and epoch is not None else ''
        accs = ', '.join(f'top-{t} {results[f"knn/top{t}"]:.2f}' for t in self.topk)
        runner.logger.info(
            f'kNN (k={self.k}, T={self.temperature:g}, {FEATURE_NAMES[self.feature]} of '
            f'block {where}) at {when}iter {step}: {accs} | bank '
            f'{bank.shape[0]}, queries {num_queries}, {num_classes} classes | '
            f'{seconds:.1f} s; kNN total {self._knn_seconds:.1f} s{share}')
        return results

    @property
    def knn_seconds(self) -> float:
        """Wall seconds spent in kNN evaluations since training started."""
        return self._knn_seconds
