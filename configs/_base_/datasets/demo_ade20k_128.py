# The bundled demo data (tools/misc/make_demo_data.py) in ADE20K layout, 128 px images,
# 8 classes (wall, floor, 6 shapes; label 0 = "other", ignored as in ADE20K), read by
# mmseg's BaseSegDataset (ADE20KDataset accepts only ADE's own 150 class names), with
# the ADE20K pipeline of configs/_base_/datasets/ade20k_512.py scaled to 128 px.
# Built in mmbeit's scope (no _scope_): every step names its registry (mmseg.X), and
# in mmseg's own scope mmcv's LoadImageFromFile is not found under the mmseg. prefix.
dataset_type = 'mmseg.BaseSegDataset'
data_root = 'data/demo/ade20k'
classes = ('wall', 'floor', 'circle', 'square', 'triangle', 'cross', 'ring', 'diamond')
crop_size = (128, 128)

train_pipeline = [
    dict(type='mmseg.LoadImageFromFile'),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='mmseg.RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='mmseg.RandomFlip', prob=0.5),
    dict(type='mmseg.PhotoMetricDistortion'),
    dict(type='mmseg.PackSegInputs'),
]
test_pipeline = [
    dict(type='mmseg.LoadImageFromFile'),
    dict(type='mmseg.Resize', scale=(512, 128), keep_ratio=True),
    dict(type='mmseg.LoadAnnotations', reduce_zero_label=True),
    dict(type='mmseg.PackSegInputs'),
]

_dataset = dict(type=dataset_type, data_root=data_root,
                metainfo=dict(classes=classes),
                img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**_dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training')),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**_dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='mmseg.IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
