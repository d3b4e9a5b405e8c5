# ADE20K semantic segmentation, UperNet on BEiT v2 ViT-L/16 from our 300-epoch
# pretraining, 512 x 512 crops, 160k iterations at batch 16 (unilm beit2/semantic_segmentation):
# AdamW lr 4e-5, layer decay 0.9, drop path 0.2; features of blocks 8, 12, 16, 24.
# Paper: 56.7 mIoU (single scale, 1600-epoch pretraining).
_base_ = [
    '../../_base_/models/upernet_beit_vit-base.py',
    '../../_base_/datasets/ade20k_512.py',
    '../../_base_/schedules/upernet_160k.py',
    '../../_base_/default_runtime.py',
]

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=512,
        arch='large', layer_scale_init_value=1e-5, out_indices=[7, 11, 15, 23],
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beitv2_vit-large_300e/epoch_300.pth')),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], channels=1024),
    auxiliary_head=dict(in_channels=1024),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = dict(optimizer=dict(lr=4e-5), paramwise_cfg=dict(layer_decay_rate=0.9))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=16000, max_keep_ckpts=2, save_best='mIoU'))
