# Demo: a tiny BEiT ViT classifier trained from scratch on the bundled demo data, on a CPU
# in a couple of minutes. The same pieces as the real fine-tuning configs: mmbeit's
# BEiTViT (per-layer relative position bias, LayerScale, mean pooling through fc_norm)
# inside mmpretrain's ImageClassifier, mmbeit's optimizer constructor,
# mmpretrain's ImageNet reader, transforms and accuracy metric.
_base_ = [
    '../_base_/datasets/demo_imagenet_64.py',
    '../_base_/default_runtime.py',
]

embed_dims = 128
# mmpretrain's ImageClassifier builds its children in its own scope (`_scope_`), so its
# parts need no prefix and ours carry `mmbeit.`.
model = dict(
    type='ImageClassifier', _scope_='mmpretrain',
    data_preprocessor=dict(
        type='ClsDataPreprocessor', num_classes=8, to_rgb=True,
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    backbone=dict(
        type='mmbeit.BEiTViT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                  feedforward_channels=4 * embed_dims),
        img_size=64, patch_size=8,
        rel_pos_bias='per_layer', layer_scale_init_value=0.1, drop_path_rate=0.1,
        out_type='avg_featmap'),
    neck=None,
    head=dict(
        type='LinearClsHead', num_classes=8, in_channels=embed_dims,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, betas=(0.9, 0.999)),
    # The constructor's no-weight-decay rules (biases, norms, pos_embed, cls_token); no
    # layer-wise decay for a model trained from scratch (fine-tuning configs use 0.65).
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
    clip_grad=dict(max_norm=5.0),
)
max_epochs = 30
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=3,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=3, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=32)

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=10, max_keep_ckpts=1, save_best='accuracy/top1'),
)
