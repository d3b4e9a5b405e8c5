# COCO 2017 instance segmentation with large-scale jitter at 1024 (ViTDet §4 and
# detectron2's LSJ data config; Ghiasi et al. 2021 "Simple Copy-Paste"): the image is
# resized so its long side is 1024 x U(0.1, 2.0), a 1024 x 1024 window is cropped from it
# (boxes recomputed from the cropped masks), horizontally flipped with p 0.5, and the
# batch padded to 1024 x 1024 (the model's data preprocessor). Test: long side resized to
# 1024; the model's data preprocessor pads it to 1024 x 1024 (pad_size_divisor=1024) with
# 0 after normalisation (the mean pixel), as detectron2 pads. Not mmdet's Pad transform:
# it reports the padded canvas as the image's shape, so boxes would be clipped to the
# canvas instead of the image. Box and mask AP by mmdet's CocoMetric.
#
# mmdet's CocoDataset, transforms and CocoMetric as they are; the dataset is built in
# mmdet's scope (_scope_) so its transforms resolve there, mmcv's included.
# Batch 64 = 16 GPUs x 4 (tools/dist_train.sh CONFIG 16; fewer GPUs: auto_scale_lr).
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
image_size = (1024, 1024)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size,
         recompute_bbox=True, allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type, _scope_='mmdet', data_root=data_root,
        ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type, _scope_='mmdet', data_root=data_root,
        ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/'),
        test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='mmdet.CocoMetric', ann_file=data_root +
                     'annotations/instances_val2017.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator
