# Linear probing of BEiT v2 ViT-B/16 on ImageNet-1k (BEiT v2 paper: 80.1 top-1 for the
# 300-epoch base model): a linear classifier on the cls token of the last block after
# the pretrained final LayerNorm (`norm`), the feature BEiT v2's patch aggregation trains
# to summarise the image; the whole backbone frozen. The v2 paper's probe table gives no
# optimiser settings we could read, so optimiser and schedule follow unilm's released probe
# script (beit/run_linear_eval.py).
_base_ = [
    '../../_base_/datasets/imagenet_linear_probe.py',
    '../../_base_/schedules/linear_probe_100e.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    type='ImageClassifier', _scope_='mmpretrain',
    data_preprocessor=dict(
        type='ClsDataPreprocessor', num_classes=1000, to_rgb=True,
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    backbone=dict(
        type='mmbeit.BEiTViT', arch='base', img_size=224, patch_size=16,
        rel_pos_bias='per_layer', layer_scale_init_value=0.1, drop_path_rate=0.,
        final_norm=True, out_type='cls_token', frozen_stages=12,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beitv2_vit-base_300e/epoch_300.pth')),
    neck=None,
    head=dict(
        type='LinearClsHead', num_classes=1000, in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='Normal', layer='Linear', std=0.01, bias=0.)),
)
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=5, max_keep_ckpts=2, save_best='accuracy/top1'))
