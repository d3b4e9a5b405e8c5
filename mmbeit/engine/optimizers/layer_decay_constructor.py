"""Layer-wise learning-rate decay optimiser-wrapper constructor for BEiT / BEiT v2.

One constructor serves classification fine-tuning, segmentation fine-tuning and
pretraining (BEiT paper section 3.1 and Table 13: layer-wise learning-rate decay; unilm
beit/optim_factory.py; docs/contracts.md "Layer depth").

Layer ids come from the module that defines ``get_layer_depth(name)`` and ``num_layers``
(L): either the model itself, or ``model.backbone`` (names then lose their ``backbone.``
prefix, and every parameter outside the backbone gets id L + 1). A parameter with id
``i`` trains with ``lr = base_lr * decay ** (L + 1 - i)``.

Weight decay is switched off for every 1-D parameter, every bias, and ``pos_embed`` /
``cls_token``. The names are matched on their last component, so a ``backbone.`` prefix
does not hide them (mmseg's constructor has that bug). ``mask_token`` and
the 2-D relative-position tables keep weight decay (unilm optim_factory.py).

Example config::

    optim_wrapper = dict(
        type='MixedPrecisionOptimWrapper', dtype='bfloat16',
        optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.05, betas=(0.9, 0.999)),
        constructor='LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.65),
        clip_grad=dict(max_norm=3.0))

Adam / AdamW get ``fused=True`` when every parameter is on CUDA (one multi-tensor kernel
per step instead of a loop of small ones), unless the optimizer config sets ``fused`` or
``foreach`` itself; on CPU the optimizer is built as configured.

Every param group already carries its scaled ``lr``. mmengine's LR schedulers multiply
each group's current lr by a common factor (``LinearLR``, ``CosineAnnealingLR`` with
``eta_min=0``), so the ratios between groups hold over training. An absolute
``eta_min`` in ``CosineAnnealingLR`` is one floor shared by all groups and bends the
ratios near the end. ``eta_min_ratio`` gives each group its own floor, which is what
unilm does (its min lr is scaled per group too).
"""
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmbeit.models.utils.arg_checks import check_number
from mmbeit.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

__all__ = ['LayerDecayOptimWrapperConstructor', 'use_fused_adam']

# Last name components that never get weight decay (unilm optim_factory).
DEFAULT_NO_DECAY_NAMES = ('pos_embed', 'cls_token')


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / mmengine model wrappers (they keep the model in
    ``.module``)."""
    while (is_model_wrapper(model) or isinstance(
            model, (nn.DataParallel, nn.parallel.DistributedDataParallel))):
        model = model.module
    return model


def _on_cuda(tensor: torch.Tensor) -> bool:
    return tensor.device.type == 'cuda'


def use_fused_adam(optimizer_cls, optimizer_cfg: dict, param_groups: Sequence[dict]) -> bool:
    """Whether to build ``optimizer_cls`` with ``fused=True``: Adam / AdamW whose
    parameters are all floating-point CUDA tensors, unless the config sets ``fused`` (or
    ``foreach``, which excludes it) itself. The fused kernel updates every parameter in a
    few launches and handles a GradScaler's inf checks without a host sync."""
    if not (isinstance(optimizer_cls, type)
            and issubclass(optimizer_cls, (torch.optim.Adam, torch.optim.AdamW))):
        return False
    if 'fused' in optimizer_cfg or optimizer_cfg.get('foreach'):
        return False
    params = [p for g in param_groups for p in g['params']]
    return bool(params) and all(_on_cuda(p) and p.is_floating_point() for p in params)


def _has_depth_api(module) -> bool:
    return (isinstance(module, nn.Module) and callable(getattr(module, 'get_layer_depth', None))
            and hasattr(module, 'num_layers'))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Build an optimiser wrapper with layer-wise lr decay and BEiT's no-decay rules.

    Args:
        optim_wrapper_cfg (dict): ``optim_wrapper`` config: ``type`` (default
            ``'OptimWrapper'``), ``optimizer`` (needs ``lr``; ``weight_decay`` defaults
            to 0) and anything else the wrapper takes (``clip_grad``,
            ``accumulative_counts``, ...), which is passed through.
        paramwise_cfg (dict, optional): supported keys:

            - ``layer_decay_rate`` (float, default 1.0): the decay; 1.0 means none.
            - ``no_decay_names`` (list[str]): extra last name components that get no
              weight decay, added to ``pos_embed`` and ``cls_token``.

    Each param group holds the parameters of one (layer id, decay / no-decay) pair and
    carries ``lr`` (already scaled), ``weight_decay``, ``lr_scale``, ``layer_id`` and
    ``group_name``. Parameters with ``requires_grad=False`` are left out.
    """

    SUPPORTED_KEYS = ('layer_decay_rate', 'no_decay_names')

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(self.SUPPORTED_KEYS))
        if unknown:
            raise ValueError(
                f'{type(self).__name__}: unsupported paramwise_cfg keys {unknown}; '
                f'supported: {list(self.SUPPORTED_KEYS)}')
        rate = check_number(paramwise_cfg.get('layer_decay_rate', 1.0), 'layer_decay_rate',
                            f'{type(self).__name__} paramwise_cfg', low=0, high=1,
                            low_open=True)
        extra = paramwise_cfg.get('no_decay_names', ())
        if isinstance(extra, str):
            extra = (extra, )
        if not (isinstance(extra, (tuple, list)) and all(isinstance(n, str) for n in extra)):
            raise ValueError(f'{type(self).__name__} paramwise_cfg: no_decay_names must be a '
                             f'list of parameter name endings (e.g. [\'mask_token\']), got '
                             f'{extra!r}')
        self.layer_decay_rate = rate
        self.no_decay_names = tuple(DEFAULT_NO_DECAY_NAMES) + tuple(extra)
        # Hand the parent an empty paramwise_cfg: it only validates it, all the
        # grouping happens here.
        super().__init__(optim_wrapper_cfg, None)
        self.paramwise_cfg = paramwise_cfg

    # ------------------------------------------------------------------ helpers
    def _depth_source(self, model: nn.Module) -> tuple[Optional[nn.Module], str]:
        """Return (module with get_layer_depth / num_layers, name prefix to strip)."""
        if _has_depth_api(model):
            return model, ''
        backbone = getattr(model, 'backbone', None)
        if _has_depth_api(backbone):
            return backbone, 'backbone.'
        return None, ''

    @staticmethod
    def _layer_id(source: nn.Module, rel_name: str, num_layers: int) -> int:
        depth = source.get_layer_depth(rel_name)
        if isinstance(depth, (tuple, list)):
            # mmpretrain style: (depth, num_layers + 2)
            depth = depth[0]
        depth = int(depth)
        if not 0 <= depth <= num_layers + 1:
            raise ValueError(
                f'{type(source).__name__}.get_layer_depth({rel_name!r}) returned {depth}, '
                f'outside [0, num_layers + 1 = {num_layers + 1}]')
        return depth

    def _is_no_decay(self, name: str, param: nn.Parameter) -> bool:
        last = name.rsplit('.', 1)[-1]
        return param.ndim == 1 or last == 'bias' or last in self.no_decay_names

    def build_param_groups(self, model: nn.Module) -> list[dict]:
        """Group the trainable parameters of ``model`` (already unwrapped)."""
        base_lr = self.optimizer_cfg.get('lr')
        if base_lr is None:
            raise ValueError(f'{type(self).__name__} needs optimizer.lr in the config')
        base_lr = float(base_lr)
        base_wd = float(self.optimizer_cfg.get('weight_decay', 0.0) or 0.0)
        rate = self.layer_decay_rate

        source, prefix = self._depth_source(model)
        if source is None:
            if rate < 1.0:
                raise ValueError(
                    f'layer_decay_rate={rate} needs layer depths, but '
                    f'{type(model).__name__} (and its .backbone, if any) does not define '
                    'both get_layer_depth(name) and num_layers. Use a backbone such as '
                    'BEiTViT, or add these to the model (docs/contracts.md "Layer depth").')
            num_layers = 0
        else:
            num_layers = int(source.num_layers)

        groups: OrderedDict[tuple[int, bool], dict] = OrderedDict()
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if source is None:
                layer_id = num_layers + 1
            elif prefix and not name.startswith(prefix):
                layer_id = num_layers + 1
            else:
                layer_id = self._layer_id(source, name[len(prefix):], num_layers)
            no_decay = self._is_no_decay(name, param)
            key = (layer_id, no_decay)
            if key not in groups:
                scale = rate**(num_layers + 1 - layer_id)
                groups[key] = dict(
                    params=[],
                    lr=base_lr * scale,
                    weight_decay=0.0 if no_decay else base_wd,
                    lr_scale=scale,
                    layer_id=layer_id,
                    group_name=f'layer_{layer_id}_{"no_decay" if no_decay else "decay"}')
            groups[key]['params'].append(param)

        ordered = [groups[k] for k in sorted(groups)]
        self._log_groups(model, ordered, num_layers)
        return ordered

    def _log_groups(self, model: nn.Module, groups: Sequence[dict], num_layers: int) -> None:
        lines = [
            f'{type(self).__name__}: {type(model).__name__}, L={num_layers}, '
            f'layer_decay_rate={self.layer_decay_rate}, {len(groups)} param groups',
            f'{"layer":>5} {"scale":>10} {"lr":>11} {"wd":>8} {"#tensors":>8} {"#params":>11}'
        ]
        for g in groups:
            numel = sum(p.numel() for p in g['params'])
            lines.append(f'{g["layer_id"]:>5d} {g["lr_scale"]:>10.4g} {g["lr"]:>11.4g} '
                         f'{g["weight_decay"]:>8.4g} {len(g["params"]):>8d} {numel:>11d}')
        print_log('\n'.join(lines), logger='current')

    # -------------------------------------------------------------------- build
    def __call__(self, model: nn.Module) -> OptimWrapper:
        model = _unwrap(model)
        param_groups = self.build_param_groups(model)
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            optimizer_cls = OPTIMIZERS.get(optimizer_cls)
        # torch optimisers call it `params`; ask the class, as mmengine does.
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters), 'params')
        optimizer_cfg[first_arg] = param_groups
        if use_fused_adam(optimizer_cls, optimizer_cfg, param_groups):
            optimizer_cfg['fused'] = True
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg, default_args=dict(optimizer=optimizer))
