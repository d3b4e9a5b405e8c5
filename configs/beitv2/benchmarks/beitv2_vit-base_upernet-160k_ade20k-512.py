# ADE20K semantic segmentation, UperNet on BEiT v2 ViT-B/16 from our 300-epoch
# pretraining, 512 x 512 crops, 160k iterations at batch 16 (unilm
# beit2/semantic_segmentation): AdamW lr 5e-5, layer decay 0.75, drop path 0.15; slide
# test with stride 341. Paper: 53.1 mIoU (single scale, 1600-epoch pretraining).
#
# The backbone loads the pretraining checkpoint as written: the shared relative position
# table becomes per-layer tables resized from 14 x 14 to 32 x 32; mask token, final norm,
# v2 neck and MIM head are left out.
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
        img_size=512, drop_path_rate=0.15,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beitv2_vit-base_300e/epoch_300.pth')),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=16000, max_keep_ckpts=2, save_best='mIoU'))
