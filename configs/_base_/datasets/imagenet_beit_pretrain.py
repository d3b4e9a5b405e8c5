# ImageNet-1k images for BEiT (v1) pretraining: colour jitter 0.4,
# flip, one RandomResizedCrop (scale 0.08-1) resized to 224 bicubic for the backbone and
# to 112 LANCZOS for the DALL-E tokenizer. Labels are not used; any folder of images works
# too: dataset=dict(type='SeededDataset', dataset=dict(type='UnlabeledImageFolder',
# data_root='data/my_images', pipeline=train_pipeline)).
dataset_type = 'mmpretrain.ImageNet'
data_root = 'data/imagenet'

train_pipeline = [
    # lazy: read bytes + header here, decode once in BEiTMaskedViews after the crop is
    # drawn (JPEGs at 1/2, 1/4 or 1/8 size when the crop allows)
    dict(type='mmbeit.LoadImageRGB', lazy=True),
    dict(type='mmbeit.BEiTMaskedViews', img_size=224, target_size=112,
         interpolation='bicubic', target_interpolation='lanczos', scale=(0.08, 1.0),
         color_jitter=(0.4, 0.4, 0.4, 0.0), flip_prob=0.5),
    # the sample's patch mask, drawn in the dataloader worker next to the crop
    dict(type='mmbeit.MIMMask', patch_size=16,
         generator=dict(type='BlockwiseMaskGenerator', mask_ratio=75 / 196,
                        min_num_patches=16, min_aspect=0.3, exact=False)),
    dict(type='mmbeit.PackMIMInputs'),
]

train_dataloader = dict(
    batch_size=128,  # x 16 GPUs = 2048 (the paper's batch)
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    # every sample's crop, flip, jitter and mask seeded from (seed, epoch, position):
    # different on every rank, independent of the number of ranks and workers, replayed
    # exactly by --resume (mmbeit/datasets/seeding.py)
    sampler=dict(type='mmbeit.SeededSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),  # stacked (and pinned) in the workers
    dataset=dict(
        type='mmbeit.SeededDataset',
        dataset=dict(type=dataset_type, _scope_='mmpretrain', data_root=data_root,
                     split='train', pipeline=train_pipeline)),
)
