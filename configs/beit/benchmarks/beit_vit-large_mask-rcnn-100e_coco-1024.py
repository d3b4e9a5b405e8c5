# COCO instance segmentation: Mask R-CNN, ViTDet style, on BEiT (v1) ViT-L/16 from our
# 800-epoch pretraining; the BEiT v2 ViT-L recipe
# (configs/beitv2/benchmarks/beitv2_vit-large_mask-rcnn-100e_coco-1024.py): global blocks
# 5, 11, 17, 23, layer decay 0.8, drop path 0.4.
_base_ = ['../../beitv2/benchmarks/beitv2_vit-large_mask-rcnn-100e_coco-1024.py']

model = dict(
    backbone=dict(init_cfg=dict(checkpoint='work_dirs/beit_vit-large_800e/epoch_800.pth')))
