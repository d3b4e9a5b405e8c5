# COCO instance segmentation: Mask R-CNN, ViTDet style, on BEiT v2 ViT-B/16 from our
# 300-epoch pretraining; LSJ at 1024, 100 epochs at batch 64 (16 GPUs x 4), AdamW lr 1e-4,
# weight decay 0.1, layer decay 0.7, drop path 0.1 (ViTDet's ViT-B settings, Li et al.
# 2022 Appendix A.2). No BEiT v2 COCO numbers were published (unilm#1108); ViTDet reports
# 51.6 box AP / 45.9 mask AP for MAE ViT-B with this recipe (detectron2 projects/ViTDet
# model zoo).
#
# The backbone loads the pretraining checkpoint as written (no conversion): window
# blocks keep their 14 x 14 relative position tables byte for byte, the global blocks
# (2, 5, 8, 11) get them resized to the 64 x 64 grid; mask token, v2 neck and MIM head
# are left out. An official BEiT v2 file loads the same way with checkpoint=PATH.
_base_ = [
    '../../_base_/models/mask-rcnn_beit_vit-base_vitdet.py',
    '../../_base_/datasets/coco_instance_lsj_1024.py',
    '../../_base_/schedules/vitdet_100e.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beitv2_vit-base_300e/epoch_300.pth')))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.7))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=18438, max_keep_ckpts=2,
                    save_best='coco/segm_mAP'))
