# Demo: Mask R-CNN, ViTDet style, with a tiny BEiT ViT trained from scratch on the bundled
# demo data (COCO layout, 128 px), the baseline that the pretrained demo detector
# (beitv2_vit-tiny-p8_mask-rcnn_demo-coco-128.py) is compared against. The pieces of
# configs/beitv2/benchmarks/*mask-rcnn*: mmbeit.MaskRCNN (mmdet's), RPN (2 convs), 4conv1fc box
# head and FCN mask head with LayerNorm'd convs; mmbeit's BEiTViT with windowed attention
# and SimpleFeaturePyramid; LSJ (scale range 0.5-2, see the dataset base), box / mask AP.
#
# Scaled to the demo: the demo pretraining's tiny ViT (4 blocks, 128 wide, patch 8); its
# 64 px pretraining grid is 8 x 8, so blocks 0 and 2 attend in 8 x 8 windows (the 16 x 16
# grid of a 128 px input holds 4) and blocks 1 and 3 globally; the map is at stride 8,
# so the pyramid rescales by 2, 1, 1/2, 1/4 (strides 4..32, +64 by subsampling); 64
# channels in the pyramid and heads instead of 256 (fc 256 instead of 1024); anchors
# 16..256 px (scale 4 instead of 8) for 15-60 px shapes. AdamW lr 1e-3 (as the other demo
# fine-tunes), weight decay 0.1, ViTDet's step schedule compressed to `max_iters`.
_base_ = [
    '../_base_/models/mask-rcnn_beit_vit-base_vitdet.py',
    '../_base_/datasets/demo_coco_128.py',
    '../_base_/default_runtime.py',
]

embed_dims = 128
channels = 64
norm_cfg = dict(type='mmbeit.LN2d', requires_grad=True)
model = dict(
    data_preprocessor=dict(
        pad_size_divisor=128,
        batch_augments=[dict(type='BatchFixedSizePad', size=(128, 128), pad_mask=True)]),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, num_layers=4, num_heads=4,
                  feedforward_channels=4 * embed_dims),
        img_size=128, patch_size=8, drop_path_rate=0.1,
        window_size=8, window_block_indexes=[0, 2]),
    neck=dict(in_channels=embed_dims, out_channels=channels,
              scale_factors=(2.0, 1.0, 0.5, 0.25)),
    rpn_head=dict(in_channels=channels, feat_channels=channels,
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(in_channels=channels, conv_out_channels=channels,
                       fc_out_channels=256, num_classes=8),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(in_channels=channels, conv_out_channels=channels, num_classes=8)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=128))),
    # every detection is scored (up to 100 an image, as COCO's AP counts them): after a
    # few hundred iterations most scores sit under the usual 0.05, and a threshold can
    # only hide recall from AP, never add precision
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300), rcnn=dict(score_thr=0.0)))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.1),
    # no layer-wise decay from scratch; the pretrained demo uses 0.65
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
    clip_grad=dict(max_norm=5.0))
max_iters = 600
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    # ViTDet's x0.1 steps at 88.9 % and 96.3 % of the run
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.889), int(max_iters * 0.963)], gamma=0.1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=200)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=8)

default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=200, max_keep_ckpts=1),
)
log_processor = dict(by_epoch=False)
