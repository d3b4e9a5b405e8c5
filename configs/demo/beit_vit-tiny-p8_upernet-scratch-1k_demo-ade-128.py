# Demo: UperNet segmentation with a tiny BEiT ViT trained from scratch on the bundled
# demo data (ADE20K layout, 128 px), the baseline that the pretrained demo segmentor
# (beitv2_vit-tiny-p8_upernet-1k_demo-ade-128.py) is compared against. The same pieces
# as configs/beitv2/benchmarks/*upernet*: mmseg's EncoderDecoder, Feature2Pyramid neck,
# UPerHead and FCN auxiliary head, mmbeit's BEiTViT and layer-decay
# constructor, the ADE20K pipeline, sliding-window test and mIoU.
_base_ = [
    '../_base_/datasets/demo_ade20k_128.py',
    '../_base_/default_runtime.py',
]

embed_dims = 128
crop_size = (128, 128)  # as in the dataset base
# SyncBN as in the real configs; on a CPU or in one process the tools switch it to BN and
# say so in the log.
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder', _scope_='mmseg',
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
        size=crop_size),
    backbone=dict(
        type='mmbeit.BEiTViT',
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                  feedforward_channels=4 * embed_dims),
        img_size=128, patch_size=8, rel_pos_bias='per_layer', layer_scale_init_value=0.1,
        drop_path_rate=0.1, out_indices=[0, 1, 2, 3], out_type='featmap'),
    # Patch 8 puts the blocks' maps at stride 8, so the pyramid rescales by 2, 1, 1/2, 1/4
    # to reach the strides 4 / 8 / 16 / 32 of the real configs (patch 16: 4, 2, 1, 1/2).
    neck=dict(type='Feature2Pyramid', embed_dim=embed_dims, rescales=[2, 1, 0.5, 0.25],
              norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead', in_channels=[embed_dims] * 4, in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6), channels=64, dropout_ratio=0.1, num_classes=8,
        norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead', in_channels=embed_dims, in_index=2, channels=32, num_convs=1,
        concat_input=False, dropout_ratio=0.1, num_classes=8, norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(85, 85)),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    # no layer-wise decay from scratch; the pretrained demo uses 0.65
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
)
max_iters = 1000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=100, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=250)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=8)

default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=250, max_keep_ckpts=1),
)
log_processor = dict(by_epoch=False)
