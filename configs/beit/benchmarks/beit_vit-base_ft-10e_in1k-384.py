# BEiT (v1) ViT-B/16 at 384 x 384: 10 more epochs on ImageNet-1k after the 224 fine-tuning
# (beit_vit-base_ft-100e_in1k.py), as the BEiT paper does (section 3.1; 84.6 top-1).
# The whole classifier of the 224 run is the start point: its backbone through the load
# path, which resizes the 14 x 14 relative position tables to 24 x 24
# (geometric-progression bicubic), and its fc_norm and head. The paper gives only the
# epoch count for this stage; lr 5e-5 at batch 512 (8 GPUs x 64), 2 warmup epochs and
# layer decay 0.65 are mmbeit's choice. Eval: resize the short edge to 384, centre crop
# 384 (crop_pct 1.0, as unilm at >= 384).
_base_ = [
    '../../_base_/models/beit_vit-base_cls.py',
    '../../_base_/datasets/imagenet_finetune_224.py',
    '../../_base_/schedules/finetune_in1k_100e.py',
    '../../_base_/default_runtime.py',
]

finetuned = 'work_dirs/beit_vit-base_ft-100e_in1k/epoch_100.pth'
model = dict(
    backbone=dict(
        img_size=384, drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', prefix='backbone.', checkpoint=finetuned)),
    head=dict(init_cfg=dict(_delete_=True, type='Pretrained', prefix='head.',
                            checkpoint=finetuned)))

bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.RandomResizedCrop', scale=384, backend='pillow',
         interpolation='bicubic'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.RandAugment', policies='timm_increasing', num_policies=2,
         total_level=10, magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(type='mmpretrain.RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='mmpretrain.PackInputs'),
]
test_pipeline = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.ResizeEdge', scale=384, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='mmpretrain.CenterCrop', crop_size=384),
    dict(type='mmpretrain.PackInputs'),
]
train_dataloader = dict(batch_size=64, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=5e-5))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-6 / 5e-5, by_epoch=True, begin=2,
         end=10, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=10)
auto_scale_lr = dict(base_batch_size=512)
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='accuracy/top1'))
