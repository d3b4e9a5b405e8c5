# Demo: BEiT v2 pretraining of a tiny ViT on the bundled demo data, on a CPU in a few
# minutes, with the tokenizer trained by the demo VQ-KD config. The same algorithm,
# neck, head, mask generator and data pipeline as configs/beitv2/, only small:
# 64 px views, patch 8 (8 x 8 grid), 40% of the patches masked in blocks.
#
# The tokenizer checkpoint comes from the tokenizer demo; tools/run_demo.sh passes it:
#   python tools/train.py THIS_CONFIG \
#       --cfg-options model.target_generator.checkpoint=WORK_DIR/tokenizer/epoch_20.pth
# Without it the tokenizer keeps random weights (a warning says so).
_base_ = ['../_base_/default_runtime.py']

embed_dims = 128
arch = dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
            feedforward_channels=4 * embed_dims)

train_pipeline = [
    # lazy: read bytes + header here, decode once in BEiTMaskedViews after the crop is
    # drawn (JPEGs at 1/2, 1/4 or 1/8 size when the crop allows)
    dict(type='mmbeit.LoadImageRGB', lazy=True),
    dict(type='mmbeit.BEiTMaskedViews', img_size=64, target_size=64, interpolation='bicubic',
         target_interpolation='bicubic', scale=(0.2, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.0),
         flip_prob=0.5),
    dict(type='mmbeit.MIMMask', patch_size=8,  # 8 x 8 grid, 40% in blocks
         generator=dict(type='BlockwiseMaskGenerator', mask_ratio=0.4, min_num_patches=4,
                        min_aspect=0.3, exact=True)),
    dict(type='mmbeit.PackMIMInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=True,
    # per-sample randomness from (seed, epoch, position): see configs/_base_/datasets/
    sampler=dict(type='mmbeit.SeededSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    # Self-supervised pretraining on the unlabeled TRAIN images of both downstream demo
    # tasks (labels are not read), as a user pretrains on the images of their domain:
    # the 640 classification images (single shapes) and the 160 segmentation scenes
    # (wall, floor, several shapes). Validation images are never seen.
    dataset=dict(
        type='SeededDataset',
        dataset=dict(
            type='ConcatDataset',
            datasets=[
                dict(type='UnlabeledImageFolder', data_root='data/demo/imagenet/train',
                     pipeline=train_pipeline),
                dict(type='UnlabeledImageFolder',
                     data_root='data/demo/ade20k/images/training', pipeline=train_pipeline),
            ])),
)

model = dict(
    type='BEiT',
    data_preprocessor=dict(
        type='MIMDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], patch_size=8),
    backbone=dict(
        type='BEiTViT', arch=arch, img_size=64, patch_size=8, rel_pos_bias='shared',
        layer_scale_init_value=0.1, drop_path_rate=0., use_mask_token=True, final_norm=True,
        out_type='raw'),
    neck=dict(type='BEiTV2Neck', early_layers=3, num_layers=2, embed_dims=embed_dims,
              num_heads=4, feedforward_channels=4 * embed_dims, layer_scale_init_value=0.1,
              backbone_layers=4),
    head=dict(type='MIMHead', in_channels=embed_dims, vocab_size=512),
    # the demo tokenizer (configs/demo/vqkd_vit-tiny-p8_random-teacher_20e_demo-64.py)
    target_generator=dict(
        type='VQKD', encoder=dict(arch=arch, img_size=64, patch_size=8),
        quantizer=dict(num_tokens=512, embed_dims=16), with_decoder=False, checkpoint=None),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
    clip_grad=dict(max_norm=3.0),
)
max_epochs = 30
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=2,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=32)

default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=10, max_keep_ckpts=1),
)
