"""Layer-wise lr decay on a whole Mask R-CNN (issue 17; ViTDet, Li et al. 2022, Appendix
A.2: layer decay for the ViT, the full lr for the pyramid and heads): the demo detection
configs' model, built in-process, and the param groups of the optimiser that their
``optim_wrapper`` builds with LayerDecayOptimWrapperConstructor."""
import functools

import pytest
import torch.nn as nn
from _helpers import ROOT
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

SCRATCH = 'configs/demo/beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py'
PRETRAINED = 'configs/demo/beitv2_vit-tiny-p8_mask-rcnn_demo-coco-128.py'
NO_DECAY_LAST = ('bias', 'q_bias', 'v_bias', 'gamma_1', 'gamma_2', 'cls_token', 'pos_embed')

pytestmark = pytest.mark.usefixtures('one_thread')


@functools.lru_cache(maxsize=None)
def built(name, rate=None):
    """(config, model, optimiser) of config ``name``; ``rate`` overrides its layer decay."""
    import mmbeit.engine  # noqa: F401
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    cfg = Config.fromfile(f'{ROOT}/{name}')
    cfg.model.backbone.pop('init_cfg', None)  # the optimiser does not need the weights
    if rate is not None:
        cfg.optim_wrapper.paramwise_cfg.layer_decay_rate = rate
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    return cfg, model, optimizer


def groups_by_name(model, optimizer):
    """parameter name -> its param group (each trainable parameter is in exactly one)."""
    by_id = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert id(p) not in by_id, 'a parameter in two groups'
            by_id[id(p)] = group
    named = dict(model.named_parameters())
    assert len(by_id) == len(named) == sum(p.requires_grad for p in named.values())
    return {n: by_id[id(p)] for n, p in named.items()}


def owners(model):
    """parameter name -> the module that holds it."""
    return {f'{m_name}.{p_name}' if m_name else p_name: m
            for m_name, m in model.named_modules()
            for p_name, _ in m.named_parameters(recurse=False)}


@pytest.mark.parametrize('name, rate', [(SCRATCH, 0.65), (PRETRAINED, 0.7),
                                        (PRETRAINED, None), (SCRATCH, None)])
def test_backbone_blocks_decay_and_the_detector_parts_get_the_full_lr(name, rate):
    """Both demo configs train without decay (1.0: for the pretrained one, the reason is
    in its header); at 0.65 and at ViTDet's 0.7 the groups decay block by block."""
    cfg, model, optimizer = built(name, rate)
    expected_rate = 1.0 if rate is None else rate
    rate = cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    assert rate == expected_rate
    base_lr, wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    num_layers = model.backbone.num_layers
    assert (num_layers, base_lr, wd) == (4, 1e-3, 0.1)
    groups = groups_by_name(model, optimizer)
    seen = set()
    for n, g in groups.items():
        part, rest = n.split('.', 1)
        if part != 'backbone':  # neck, rpn_head, roi_head: layer id L + 1
            assert part in ('neck', 'rpn_head', 'roi_head'), n
            layer_id = num_layers + 1
        elif rest.startswith('blocks.'):
            layer_id = int(rest.split('.')[1]) + 1
        else:  # cls_token, patch_embed (no pos_embed, final norm or shared table here)
            assert rest == 'cls_token' or rest.startswith('patch_embed.'), n
            layer_id = 0
        assert g['layer_id'] == layer_id, n
        assert g['lr'] == pytest.approx(base_lr * rate**(num_layers + 1 - layer_id),
                                        rel=1e-12), n
        seen.add((part, layer_id))
    assert seen == {('backbone', i) for i in range(num_layers + 1)} | {
        (p, num_layers + 1) for p in ('neck', 'rpn_head', 'roi_head')}
    # block i of L: lr * rate ** (L - i); block 0 of the demo's 4 at 0.65 is 0.1785 x lr
    block0 = groups['backbone.blocks.0.attn.qkv.weight']['lr']
    assert block0 == pytest.approx(base_lr * rate**4)
    assert groups['roi_head.mask_head.conv_logits.weight']['lr'] == base_lr


def test_norms_and_biases_get_no_weight_decay():
    cfg, model, optimizer = built(SCRATCH, 0.65)
    groups = groups_by_name(model, optimizer)
    held_by = owners(model)
    params = dict(model.named_parameters())
    no_decay = set()
    for n, g in groups.items():
        norm = isinstance(held_by[n], nn.LayerNorm)  # the ViT's norms and every LN2d
        if norm or n.rsplit('.', 1)[-1] in NO_DECAY_LAST:
            assert g['weight_decay'] == 0.0, n
            no_decay.add(n.split('.')[0])
        else:
            assert g['weight_decay'] == 0.1, n
            assert params[n].ndim >= 2, n
    assert no_decay == {'backbone', 'neck', 'rpn_head', 'roi_head'}
    # a few by name: LN2d of the pyramid and of the box / mask heads' convs, layer scale,
    # q / v biases; the relative position tables and the mask token keep weight decay
    # (unilm optim_factory.py)
    for n in ('neck.stages.0.1.1.weight', 'roi_head.bbox_head.shared_convs.0.ln.weight',
              'roi_head.mask_head.convs.3.ln.bias', 'backbone.blocks.2.gamma_1',
              'backbone.blocks.1.attn.q_bias', 'rpn_head.rpn_conv.0.conv.bias'):
        assert groups[n]['weight_decay'] == 0.0, n
    for n in ('backbone.blocks.1.attn.relative_position_bias_table',
              'backbone.patch_embed.proj.weight', 'neck.stages.0.0.weight',
              'roi_head.bbox_head.shared_fcs.0.weight'):
        assert groups[n]['weight_decay'] == 0.1, n
