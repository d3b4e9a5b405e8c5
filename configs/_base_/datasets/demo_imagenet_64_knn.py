# Labelled demo images for the kNN monitor (mmbeit KNNMonitorHook, docs/monitoring.md):
# the demo classification set (tools/misc/make_demo_data.py, ImageNet layout, 8 classes),
# its 640 train images as the memory bank and its 160 val images as the queries, read by
# mmpretrain's ImageNet reader and resized / center-cropped to 64 px as the demo
# classifiers test. Use in a config: add this file to its _base_ list, then
#   custom_hooks = [dict(type='KNNMonitorHook', bank={{_base_.knn_bank}},
#                        queries={{_base_.knn_queries}}, interval=10)]
# For a user's own labelled folder (root/train/<class>/*.jpg, root/val/<class>/*.jpg) the
# dataset is dict(type='CustomDataset', _scope_='mmpretrain', data_root=..., data_prefix=
# 'train', pipeline=knn_pipeline), and the crop size that of the pretraining views.
knn_pipeline = [
    dict(type='mmpretrain.LoadImageFromFile'),  # BGR: the hook's to_rgb=True flips it
    dict(type='mmpretrain.ResizeEdge', scale=73, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='mmpretrain.CenterCrop', crop_size=64),
    dict(type='mmpretrain.PackInputs'),
]
knn_bank = dict(
    batch_size=128,
    num_workers=0,  # 800 small images: the main process decodes them faster than workers start
    # the hook sets DefaultSampler(shuffle=False, round_up=False) itself
    dataset=dict(type='mmpretrain.ImageNet', _scope_='mmpretrain',
                 data_root='data/demo/imagenet', split='train',
                 metainfo=dict(classes='data/demo/imagenet/meta/classes.txt'),
                 pipeline=knn_pipeline),
)
knn_queries = dict(
    batch_size=128,
    num_workers=0,
    dataset=dict(type='mmpretrain.ImageNet', _scope_='mmpretrain',
                 data_root='data/demo/imagenet', split='val',
                 metainfo=dict(classes='data/demo/imagenet/meta/classes.txt'),
                 pipeline=knn_pipeline),
)
