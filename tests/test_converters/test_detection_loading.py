"""Official BEiT / BEiT v2 checkpoints (unilm key layout) and timm ones load into the
detection backbone as they are (issue 17 item 6): no conversion step, the backbone's
``init_cfg=dict(type='Pretrained')`` reads the file, window blocks keep their relative
position tables byte for byte, global blocks get them resized to the full grid.

The model is the base Mask R-CNN config (configs/_base_/models/
mask-rcnn_beit_vit-base_vitdet.py) scaled down: a 4-block, 32-wide ViT with patch 16;
pretraining at 64 px (a 4 x 4 grid, the window), detection at 128 px (an 8 x 8 grid),
windows in blocks 0 and 2, global attention in blocks 1 and 3 (ViTDet's layout, §3).
The files are made from timm's ``Beit`` (the names timm and unilm share) with random
weights, plus the entries unilm's own files hold (unilm beit/modeling_pretrain.py,
beit2/modeling_pretrain.py): the mask token, the lm head, v2's ``cls_pt_layers``, the
relative position index buffers. The reference for every tensor is
``mmbeit.converters.convert`` run on the same dict."""
import numpy as np
import pytest
import torch
from _helpers import ROOT
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmbeit.checkpoint import save_checkpoint
from mmbeit.converters import convert
from mmbeit.models.utils.rel_pos import (
    build_relative_position_index,
    rel_pos_table_len,
    resize_rel_pos_table,
)

timm_beit = pytest.importorskip('timm.models.beit')

pytestmark = pytest.mark.usefixtures('one_thread')

BASE = f'{ROOT}/configs/_base_/models/mask-rcnn_beit_vit-base_vitdet.py'
D, DEPTH, HEADS = 32, 4, 2
PRE_GRID, DET_GRID = 4, 8  # 64 px and 128 px at patch 16
WINDOW_BLOCKS, GLOBAL_BLOCKS = [0, 2], [1, 3]
TABLE = 'relative_position_bias_table'


def small_detector(checkpoint):
    """The base Mask R-CNN config with the small backbone above (init_cfg: ``checkpoint``)
    and 32-channel heads for 3 classes, built in the config's scope."""
    import mmbeit.models  # noqa: F401
    from mmbeit.registry import MODELS
    cfg = Config.fromfile(BASE)
    cfg.merge_from_dict({
        'model.data_preprocessor': dict(pad_size_divisor=128, batch_augments=[
            dict(type='BatchFixedSizePad', size=(128, 128), pad_mask=True)]),
        'model.backbone': dict(
            arch=dict(_delete_=True, embed_dims=D, num_layers=DEPTH, num_heads=HEADS,
                      feedforward_channels=2 * D),
            img_size=128, window_size=PRE_GRID, window_block_indexes=WINDOW_BLOCKS,
            init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint), prefix='backbone.')),
        'model.neck': dict(in_channels=D, out_channels=D),
        'model.rpn_head': dict(in_channels=D, feat_channels=D),
        'model.roi_head.bbox_roi_extractor.out_channels': D,
        'model.roi_head.bbox_head': dict(in_channels=D, conv_out_channels=D,
                                         fc_out_channels=64, num_classes=3),
        'model.roi_head.mask_roi_extractor.out_channels': D,
        'model.roi_head.mask_head': dict(in_channels=D, conv_out_channels=D, num_classes=3),
        'model.train_cfg.rpn_proposal': dict(nms_pre=200, max_per_img=100),
        'model.train_cfg.rcnn.sampler.num': 64,
    })
    with DefaultScope.overwrite_default_scope('mmbeit'):
        return MODELS.build(cfg.model)


def timm_beit_model(shared: bool, classifier: bool, seed: int):
    """timm's Beit at the pretraining size, every parameter perturbed (tables, layer scale
    and norms start at constants)."""
    model = timm_beit.Beit(
        img_size=64, patch_size=16, embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=2.,
        init_values=0.1, use_abs_pos_emb=False, use_rel_pos_bias=not shared,
        use_shared_rel_pos_bias=shared, global_pool='avg' if classifier else 'token',
        num_classes=5 if classifier else 0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def official_file(kind):
    """(checkpoint object as its source writes it, --src for convert)."""
    index = build_relative_position_index((PRE_GRID, PRE_GRID))
    if kind in ('beit_pretrain', 'beitv2_pretrain'):
        # unilm pretraining: one shared table, mask token, final norm, lm head, and for v2
        # the two cls_pt_layers blocks; under 'model' with the run's other entries
        sd = dict(timm_beit_model(shared=True, classifier=False, seed=1).state_dict())
        sd['mask_token'] = torch.randn(1, 1, D)
        sd['rel_pos_bias.relative_position_index'] = index
        sd['lm_head.weight'], sd['lm_head.bias'] = torch.randn(64, D), torch.randn(64)
        if kind == 'beitv2_pretrain':
            for k, v in list(sd.items()):
                if k.startswith(('blocks.0.', 'blocks.1.')):
                    sd['cls_pt_layers.' + k[len('blocks.'):]] = v + 1
        return {'model': sd, 'epoch': 299}, 'unilm'
    sd = dict(timm_beit_model(shared=False, classifier=True, seed=2).state_dict())
    if kind == 'timm_classifier':  # a timm state dict: per-layer tables, fc_norm, head
        return sd, 'timm'
    # unilm fine-tuned classifier (BEiT v1's intermediate fine-tuned releases): per-layer
    # tables with their index buffers, under 'model'
    for i in range(DEPTH):
        sd[f'blocks.{i}.attn.relative_position_index'] = index
    return {'model': sd}, 'unilm'


def loss_inputs(model):
    """One 128 x 128 image with two boxes and their masks, through the data preprocessor."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    masks = np.zeros((2, 128, 128), dtype=np.uint8)
    masks[0, 10:60, 20:90] = 1
    masks[1, 70:120, 50:100] = 1
    sample = DetDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[20., 10., 90., 60.], [50., 70., 100., 120.]]),
        labels=torch.tensor([0, 2]), masks=BitmapMasks(masks, 128, 128))
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    return model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), True)


@pytest.mark.parametrize('kind', ['beit_pretrain', 'beitv2_pretrain', 'beit_finetuned',
                                  'timm_classifier'])
def test_official_checkpoint_loads_into_the_detection_backbone(kind, tmp_path):
    ckpt, src = official_file(kind)
    path = tmp_path / f'{kind}.pth'
    save_checkpoint(ckpt, str(path))
    torch.manual_seed(0)
    model = small_detector(path)
    model.init_weights()
    got = model.backbone.state_dict()
    want, _ = convert(ckpt, src, kind='backbone')  # the same dict, converted on its own
    shared = want.get(f'rel_pos_bias.{TABLE}')
    assert (shared is not None) == kind.endswith('pretrain')

    # every backbone tensor but the tables is the converted source's, bit for bit; what
    # the source has beyond them is what a detection backbone has no place for
    tables = {k for k in got if k.endswith(TABLE)}
    assert len(tables) == DEPTH
    rest = set(got) - tables
    assert rest <= set(want)
    for k in sorted(rest):
        assert torch.equal(got[k], want[k]), k
    extra = set(want) - rest - {k for k in want if k.endswith(TABLE)}
    assert extra == ({'mask_token', 'norm.weight', 'norm.bias'} if shared is not None
                     else {'fc_norm.weight', 'fc_norm.bias'})

    # window blocks: the file's table as it is (the window is the pretraining grid);
    # global blocks: resized from the 4 x 4 to the 8 x 8 grid, (2 * 8 - 1)^2 + 3 rows
    for i in range(DEPTH):
        table = got[f'blocks.{i}.attn.{TABLE}']
        source = shared if shared is not None else want[f'blocks.{i}.attn.{TABLE}']
        assert source.shape == (rel_pos_table_len(PRE_GRID), HEADS)
        if i in WINDOW_BLOCKS:
            assert torch.equal(table, source), i
        else:
            assert table.shape == (rel_pos_table_len(DET_GRID), HEADS) == (15**2 + 3, 2)
            assert torch.equal(table, resize_rel_pos_table(source, (PRE_GRID, ) * 2,
                                                           (DET_GRID, ) * 2)), i
    report = model.backbone.pretrained_report
    assert report.ok and report.fresh == []
    assert 'a bare backbone' in report.source

    # the detector runs on the loaded weights: every loss finite, and positive
    model.train()
    losses = model(**loss_inputs(model), mode='loss')
    for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
        value = losses[key]
        value = sum(value) if isinstance(value, (list, tuple)) else value
        assert torch.isfinite(value) and value > 0, (key, value)
