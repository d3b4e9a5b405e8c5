# ADE20K (150 classes) for UperNet fine-tuning at 512 x 512 crops (unilm semseg configs):
# random resize of (2048, 512) by 0.5-2.0, random crop with cat_max_ratio 0.75, flip,
# photometric distortion; label 0 ("other") ignored through reduce_zero_label; the model's
# data preprocessor pads to the crop (image 0, label 255). Test: resize to (2048, 512) keeping
# the ratio; the model runs a sliding window. mmseg's dataset, transforms and IoU metric;
# 2 images per GPU (8 GPUs = the recipes' batch 16).
#
# Data: data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}, as
# mmseg documents (https://mmsegmentation.readthedocs.io/en/latest/user_guides/2_dataset_prepare.html#ade20k).
# Built in mmbeit's scope (no _scope_): every step names its registry (mmseg.X), and
# in mmseg's own scope mmcv's LoadImageFromFile is not found under the mmseg. prefix.
dataset_type = 'mmseg.ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
crop_size = (512, 512)

train_pipeline = [
    dict(type='mmseg.LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='mmseg.RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='mmseg.PhotoMetricDistortion'),
    dict(type='mmseg.PackSegInputs'),
]
test_pipeline = [
    dict(type='mmseg.LoadImageFromFile'),
    dict(type='mmseg.Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.PackSegInputs'),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 reduce_zero_label=True,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'),
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 reduce_zero_label=True,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation'),
                 pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='mmseg.IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
