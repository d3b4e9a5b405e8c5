# ImageNet-1k for BEiT fine-tuning (unilm run_class_finetuning.py, timm's create_transform as the
# unilm scripts call it): RandomResizedCrop 224 bicubic + flip, RandAugment
# rand-m9-mstd0.5-inc1, RandomErasing 0.25 (per-pixel noise); eval: resize the short edge
# to 256 (224 / 0.875, bicubic), centre crop 224. Mixup / CutMix run in the model
# (train_cfg.augments). mmpretrain's ImageNet reader and transforms, 128 images per GPU
# (8 GPUs = the recipes' batch 1024; auto_scale_lr rescales the lr for other totals).
#
# Data: data/imagenet/{train,val}/ plus meta/{train,val}.txt, the layout mmpretrain
# reads (https://mmpretrain.readthedocs.io/en/latest/user_guides/dataset_prepare.html).
dataset_type = 'mmpretrain.ImageNet'
data_root = 'data/imagenet'
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]

train_pipeline = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.RandomResizedCrop', scale=224, backend='pillow',
         interpolation='bicubic'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.RandAugment', policies='timm_increasing', num_policies=2,
         total_level=10, magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='mmpretrain.RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='mmpretrain.PackInputs'),
]
test_pipeline = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='mmpretrain.CenterCrop', crop_size=224),
    dict(type='mmpretrain.PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, _scope_='mmpretrain', data_root=data_root, split='train',
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, _scope_='mmpretrain', data_root=data_root, split='val',
                 pipeline=test_pipeline),
)
val_evaluator = dict(type='mmpretrain.Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
