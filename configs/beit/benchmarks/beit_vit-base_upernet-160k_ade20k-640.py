# ADE20K semantic segmentation, UperNet on BEiT (v1) ViT-B/16 from our 800-epoch
# self-supervised pretraining, 640 x 640 crops, 160k iterations at batch 16 (unilm
# beit/semantic_segmentation): AdamW lr 7e-4 and layer decay 0.65 (unilm's recipe for SSL-only
# checkpoints), drop path 0.1; slide test with stride 426. Reported for this setting:
# 47.1 mIoU (UperNet, IN-1k self-supervised only, the MAE paper's reproduction); 53.6
# with ImageNet-22k pretraining and intermediate fine-tuning.
_base_ = [
    '../../_base_/models/upernet_beit_vit-base.py',
    '../../_base_/datasets/ade20k_640.py',
    '../../_base_/schedules/upernet_160k.py',
    '../../_base_/default_runtime.py',
]

crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=640, drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beit_vit-base_800e/epoch_800.pth')),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))

optim_wrapper = dict(optimizer=dict(lr=7e-4), paramwise_cfg=dict(layer_decay_rate=0.65))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=16000, max_keep_ckpts=2, save_best='mIoU'))
