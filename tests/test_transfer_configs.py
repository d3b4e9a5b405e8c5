"""Every downstream config under configs/*/benchmarks/ loads what our own pretraining
writes (issue 6): the pretraining model of the matching recipe config is built, its
state dict saved as a run saves it, and each downstream model is built and initialised
from that file through its own init_cfg, with no conversion step. The 384 config starts
from a checkpoint of the 224 fine-tuning config instead. One test case per downstream
config, in this process; each pretraining checkpoint is written once and reused by the
cases after it. Base and large sizes, random weights (nothing can be downloaded here).

The Mask R-CNN (ViTDet) configs take a 1024 px input (a 64 x 64 grid) with windowed
attention in most blocks: a window block's table is the pretraining one byte for byte (its
14 x 14 window is the 224 px pretraining grid), a global block's is resized to the full
grid (docs/method.md "Windowed attention for detection")."""
import functools
import glob

import pytest
import torch
from _helpers import ROOT
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmbeit.models.utils.rel_pos import rel_pos_table_len, resize_rel_pos_table

C = f'{ROOT}/configs'
DOWNSTREAM = sorted(p.split('/configs/')[1]
                    for p in glob.glob(f'{C}/*/benchmarks/*.py'))
FT_224 = 'beit/benchmarks/beit_vit-base_ft-100e_in1k.py'
FT_384 = 'beit/benchmarks/beit_vit-base_ft-10e_in1k-384.py'
FC_NORM = ['fc_norm.bias', 'fc_norm.weight']
MASK_RCNN = '_mask-rcnn-100e_coco-1024.py'
# base and large models: about 115 s for the module here on a shared machine (~35 s of it the
# four Mask R-CNN cases: 1024 px grids), most of it in the first case of
# each pretraining config (all marked, so that the cached checkpoints are shared)
pytestmark = pytest.mark.slow

# downstream config -> (pretraining config it starts from, what is built, number of blocks,
# patch grid, backbone tensors left at their init). The Mask R-CNN configs: the grid of
# their global blocks (the window blocks' is 14, see WINDOWED). Large configs: backbones only (the
# loading is the backbone's; full ViT-L models with their tokenizers would take minutes
# here): the settings of each large downstream config must fit what the large pretraining
# config's backbone writes.
PLAN = {
    'beitv2/benchmarks/beitv2_vit-base_ft-100e_in1k.py':
        ('beitv2/beitv2_vit-base_300e.py', 'model', 12, 14, FC_NORM),
    'beitv2/benchmarks/beitv2_vit-base_linear-100e_in1k.py':  # keeps the final norm
        ('beitv2/beitv2_vit-base_300e.py', 'model', 12, 14, []),
    'beitv2/benchmarks/beitv2_vit-base_upernet-160k_ade20k-512.py':
        ('beitv2/beitv2_vit-base_300e.py', 'model', 12, 32, []),
    FT_224: ('beit/beit_vit-base_800e.py', 'model', 12, 14, FC_NORM),
    'beit/benchmarks/beit_vit-base_linear-layer9-100e_in1k.py':
        ('beit/beit_vit-base_800e.py', 'model', 12, 14, []),
    'beit/benchmarks/beit_vit-base_upernet-160k_ade20k-640.py':
        ('beit/beit_vit-base_800e.py', 'model', 12, 40, []),
    'beit/benchmarks/beit_vit-base' + MASK_RCNN:
        ('beit/beit_vit-base_800e.py', 'model', 12, 64, []),
    'beitv2/benchmarks/beitv2_vit-base' + MASK_RCNN:
        ('beitv2/beitv2_vit-base_300e.py', 'model', 12, 64, []),
    'beitv2/benchmarks/beitv2_vit-large_ft-50e_in1k.py':
        ('beitv2/beitv2_vit-large_300e.py', 'backbone', 24, 14, FC_NORM),
    'beitv2/benchmarks/beitv2_vit-large_upernet-160k_ade20k-512.py':
        ('beitv2/beitv2_vit-large_300e.py', 'backbone', 24, 32, []),
    'beit/benchmarks/beit_vit-large_ft-50e_in1k.py':
        ('beit/beit_vit-large_800e.py', 'backbone', 24, 14, FC_NORM),
    'beitv2/benchmarks/beitv2_vit-large' + MASK_RCNN:
        ('beitv2/beitv2_vit-large_300e.py', 'backbone', 24, 64, []),
    'beit/benchmarks/beit_vit-large' + MASK_RCNN:
        ('beit/beit_vit-large_800e.py', 'backbone', 24, 64, []),
}
# Mask R-CNN configs: the blocks that attend globally (ViTDet: 4 of them, evenly spaced);
# all others attend in 14 x 14 windows
GLOBAL_BLOCKS = {12: [2, 5, 8, 11], 24: [5, 11, 17, 23]}


@pytest.fixture(scope='module', autouse=True)
def two_threads():
    """Two intra-op threads for the ViT-B/L initialisations; the caches are emptied at the
    end of the module (they hold base and large state dicts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    pretraining.cache_clear()
    finetuned_224.cache_clear()


@pytest.fixture(scope='module')
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('transfer_ckpts')


def build(cfg, part):
    import mmbeit.engine  # noqa: F401
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmbeit'):
        if part == 'backbone':  # the backbone part of the config, keys as in the full model
            model = torch.nn.Module()
            model.backbone = MODELS.build(cfg.model.backbone)
            return model
        return MODELS.build(cfg.model)


def save(model, path):
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, path)
    return str(path)


@functools.lru_cache(maxsize=1)  # the cases of one pretraining config run one after another
def pretraining(name, part, ckpt_dir):
    """The pretraining model of config ``name``, saved as a run saves it: (file, state)."""
    cfg = Config.fromfile(f'{C}/{name}')
    for key in ('checkpoint', 'encoder_checkpoint'):
        cfg.model.target_generator.pop(key, None)
    model = build(cfg, part)
    if part == 'model':
        model.init_weights()  # else torch's default init: random values all the same
    # the tables start at zero; a trained run's are not, and a zero table would pass every
    # check on the tables below whatever the load path did with it
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k.endswith('relative_position_bias_table'):
                p.copy_(torch.randn(p.shape, generator=g))
    path = save(model, ckpt_dir / f'{name.replace("/", "_")}-{part}.pth')
    return path, model.state_dict()


def initialised(name, ckpt, part):
    """Downstream config ``name`` built and initialised from ``ckpt`` by its init_cfg."""
    from mmbeit.engine.runtime import replace_sync_bn
    cfg = Config.fromfile(f'{C}/{name}')
    replace_sync_bn(cfg.model)
    cfg.model.backbone.init_cfg.checkpoint = ckpt
    model = build(cfg, part)
    model.init_weights() if part == 'model' else model.backbone.init_weights()
    return model


@functools.lru_cache(maxsize=1)
def finetuned_224(ckpt_dir):
    """The classifier of the 224 fine-tuning run, started from the v1 pretraining and
    saved: (file, state)."""
    pre_name, part = PLAN[FT_224][:2]
    ckpt, _ = pretraining(pre_name, part, ckpt_dir)
    model = initialised(FT_224, ckpt, part)
    return save(model, ckpt_dir / 'finetuned_224.pth'), model.state_dict()


def test_every_downstream_config_has_a_plan():
    assert sorted(set(PLAN) | {FT_384}) == DOWNSTREAM, \
        'add each new configs/*/benchmarks/ config to PLAN in this file'


@pytest.mark.parametrize('name', sorted(PLAN), ids=sorted(PLAN))
def test_downstream_config_loads_its_pretraining(name, ckpt_dir):
    pre_name, part, n_blocks, grid, fresh = PLAN[name]
    ckpt, sd = pretraining(pre_name, part, ckpt_dir)
    if name == FT_224:
        ckpt_ft, ft_sd = finetuned_224(ckpt_dir)  # the model the 384 case starts from
        got = {k[len('backbone.'):]: v for k, v in ft_sd.items() if k.startswith('backbone.')}
    else:
        got = initialised(name, ckpt, part).backbone.state_dict()
    assert sorted(k for k in got if f'backbone.{k}' not in sd
                  and not k.endswith('relative_position_bias_table')) == fresh
    # every backbone tensor but the fresh ones and the (expanded / resized) tables is the
    # pretraining tensor, bit for bit
    equal = [k for k in got if f'backbone.{k}' in sd and torch.equal(got[k], sd[f'backbone.{k}'])]
    assert len(equal) == len(got) - len(fresh) - n_blocks
    shared = sd['backbone.rel_pos_bias.relative_position_bias_table']
    table = {i: got[f'blocks.{i}.attn.relative_position_bias_table'] for i in range(n_blocks)}
    if name.endswith(MASK_RCNN):
        # window blocks: the pretraining table as written (its 14 x 14 grid is the window);
        # global blocks: resized to the 64 x 64 grid, (2 * 64 - 1)^2 + 3 rows, by the load
        # path's geometric bicubic resize
        glob_ids = GLOBAL_BLOCKS[n_blocks]
        assert all(torch.equal(table[i], shared) for i in table if i not in glob_ids)
        resized = resize_rel_pos_table(shared, (14, 14), (grid, grid))
        assert resized.shape[0] == rel_pos_table_len(grid) == (2 * grid - 1) ** 2 + 3
        assert all(torch.equal(table[i], resized) for i in glob_ids)
        return
    assert sorted({t.shape[0] for t in table.values()}) == [(2 * grid - 1) ** 2 + 3]
    # at the pretraining grid (14 x 14), each block's table is the shared one as written
    assert torch.equal(table[0], shared) == (grid == 14)


def test_384_config_starts_from_the_224_run(ckpt_dir):
    ckpt, ft_sd = finetuned_224(ckpt_dir)
    cfg = Config.fromfile(f'{C}/{FT_384}')
    cfg.model.backbone.init_cfg.checkpoint = ckpt
    cfg.model.head.init_cfg.checkpoint = ckpt
    model = build(cfg, 'model')
    model.init_weights()
    got = model.state_dict()
    for key in ('head.fc.weight', 'backbone.fc_norm.weight',
                'backbone.blocks.11.attn.qkv.weight'):
        assert torch.equal(got[key], ft_sd[key]), key
    # 384 px / 16 = a 24 x 24 grid: (2 * 24 - 1)^2 + 3 relative positions, 12 heads
    table = got['backbone.blocks.0.attn.relative_position_bias_table']
    assert list(table.shape) == [47 * 47 + 3, 12]
