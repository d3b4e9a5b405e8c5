# COCO instance segmentation: Mask R-CNN, ViTDet style, on BEiT (v1) ViT-B/16 from our
# 800-epoch pretraining (DALL-E tokens); everything else as the BEiT v2 config
# (configs/beitv2/benchmarks/beitv2_vit-base_mask-rcnn-100e_coco-1024.py): LSJ 1024,
# 100 epochs at batch 64, AdamW lr 1e-4, weight decay 0.1, layer decay 0.7, drop path
# 0.1. ViTDet reports no BEiT row for this recipe; its MAE ViT-B reference is 51.6 box AP
# / 45.9 mask AP (detectron2 projects/ViTDet model zoo).
_base_ = ['../../beitv2/benchmarks/beitv2_vit-base_mask-rcnn-100e_coco-1024.py']

model = dict(
    backbone=dict(init_cfg=dict(checkpoint='work_dirs/beit_vit-base_800e/epoch_800.pth')))
