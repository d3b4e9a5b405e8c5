# ImageNet-1k images for VQ-KD tokenizer training (unilm beit2 TOKENIZER.md):
# RandomResizedCrop 224 (scale 0.08-1, bicubic) + horizontal flip, no colour jitter.
# Labels are read (mmpretrain's ImageNet layout) but not used.
dataset_type = 'mmpretrain.ImageNet'
data_root = 'data/imagenet'

train_pipeline = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.RandomResizedCrop', scale=224, crop_ratio_range=(0.08, 1.0),
         backend='pillow', interpolation='bicubic'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='mmpretrain.PackInputs'),
]

train_dataloader = dict(
    batch_size=64,  # x 8 GPUs = 512 (unilm's recipe)
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, _scope_='mmpretrain', data_root=data_root, split='train',
                 pipeline=train_pipeline),
)
