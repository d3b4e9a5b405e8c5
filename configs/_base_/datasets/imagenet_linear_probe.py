# ImageNet-1k for linear probing of a frozen BEiT backbone, as unilm's
# beit/run_linear_eval.py prepares it: RandomResizedCrop 224 (bilinear, torchvision's
# default there) + flip, no other augmentation; eval: resize the short edge to 256
# (bicubic), centre crop 224. 128 images per GPU (8 GPUs = batch 1024).
#
# Data: data/imagenet/{train,val}/ plus meta/{train,val}.txt (mmpretrain's layout).
dataset_type = 'mmpretrain.ImageNet'
data_root = 'data/imagenet'

train_pipeline = [
    dict(type='mmpretrain.LoadImageFromFile'),
    dict(type='mmpretrain.RandomResizedCrop', scale=224, backend='pillow',
         interpolation='bilinear'),
    dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
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
