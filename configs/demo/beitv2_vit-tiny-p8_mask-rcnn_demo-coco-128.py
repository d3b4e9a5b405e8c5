# Demo: Mask R-CNN, ViTDet style, from the demo pretraining checkpoint (HOG tokens) on the
# demo data (COCO layout, 128 px). Everything but the start point equals the scratch
# baseline (beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py: model, data, iterations,
# lr), plus layer-wise lr decay 0.65 for the pretrained backbone.
#
# The pretraining ran at 64 px (8 x 8 patches) with one shared relative position table;
# here the load path expands it into per-layer tables: the window blocks (0, 2) take it
# as it is (their windows are 8 x 8), the global blocks (1, 3) get it resized to the
# 16 x 16 grid of a 128 px input. By hand:
#   python tools/train.py THIS_CONFIG \
#       --cfg-options model.backbone.init_cfg.checkpoint=WORK_DIR/pretrain/epoch_150.pth
_base_ = ['./beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py']

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', prefix='backbone.',
                                checkpoint='work_dirs/demo/latest/pretrain/epoch_150.pth')))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65))
