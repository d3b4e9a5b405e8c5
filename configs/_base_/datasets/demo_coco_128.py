# The bundled demo data (tools/misc/make_demo_data.py) in COCO layout: 128 px PNGs with
# 2 to 5 shape instances each, 8 categories (ids 1..8 in this order), RLE masks of the
# visible pixels; read by mmdet's CocoDataset and scored by its CocoMetric (box and mask
# AP). The LSJ pipeline of configs/_base_/datasets/coco_instance_lsj_1024.py at 128 px,
# with one change: the scale range is U(0.5, 2.0) instead of U(0.1, 2.0), because at
# 0.1 a 128 px image shrinks to 13 px and its 15-60 px shapes to 2-6 px, and the demo's
# few hundred iterations cannot afford images with nothing left to learn from.
dataset_type = 'CocoDataset'
data_root = 'data/demo/coco/'
classes = ('circle', 'square', 'triangle', 'cross', 'ring', 'diamond', 'bar', 'star')
image_size = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.5, 2.0), keep_ratio=True),
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
_dataset = dict(type=dataset_type, _scope_='mmdet', data_root=data_root,
                metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**_dataset, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**_dataset, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='mmdet.CocoMetric', ann_file=data_root +
                     'annotations/instances_val.json', metric=['bbox', 'segm'])
test_evaluator = val_evaluator
