# COCO instance segmentation: Mask R-CNN, ViTDet style, on BEiT v2 ViT-L/16 from our
# 300-epoch pretraining; the ViT-B recipe with ViTDet's ViT-L settings (Li et al. 2022
# Appendix A.2; detectron2 mask_rcnn_vitdet_l_100ep.py): 24 blocks, global attention in
# blocks 5, 11, 17, 23 and 14 x 14 windows elsewhere, layer decay 0.8, drop path 0.4,
# 1024-channel map into the pyramid. ViTDet reports 55.5 box AP / 49.2 mask AP for MAE
# ViT-L (detectron2 projects/ViTDet model zoo).
_base_ = ['./beitv2_vit-base_mask-rcnn-100e_coco-1024.py']

model = dict(
    backbone=dict(
        arch='large', drop_path_rate=0.4,
        window_block_indexes=[i for i in range(24) if i not in (5, 11, 17, 23)],
        init_cfg=dict(checkpoint='work_dirs/beitv2_vit-large_300e/epoch_300.pth')),
    neck=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.8))
