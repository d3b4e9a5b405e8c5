# Linear probing of BEiT (v1) ViT-B/16 on ImageNet-1k from block 9 of 12, the best layer
# of the BEiT paper (Table 9: 56.7 top-1): the feature is the raw output of that block
# (no norm), its cls token and the mean of its patch tokens side by side [B, 1536], as in
# unilm's beit/run_linear_eval.py; blocks after 9 are not run. The backbone is frozen.
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
        out_indices=[8], out_type='cls_and_avg', frozen_stages=12,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beit_vit-base_800e/epoch_800.pth')),
    neck=None,
    head=dict(
        type='LinearClsHead', num_classes=1000, in_channels=1536,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='Normal', layer='Linear', std=0.01, bias=0.)),
)
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=5, max_keep_ckpts=2, save_best='accuracy/top1'))
