# Demo: Mask R-CNN, ViTDet style, from the demo pretraining checkpoint (HOG tokens) on the
# demo data (COCO layout, 128 px). Everything but the start point equals the scratch
# baseline (beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py: model, data, iterations,
# lr, and no layer-wise lr decay).
#
# No layer decay, unlike the COCO configs (ViTDet's 0.7 / 0.8): with 0.65 the patch
# embedding and first blocks (lr x 0.12-0.27) barely moved in 600 iterations, and the
# model found and named the shapes far better than scratch (AP50 +15) but placed their
# edges worse (mask AP75 -7), ending 1.3 mask AP below scratch. With the full lr
# everywhere it leads on every AP (docs/detection.md, "The demo pair").
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
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=1.0))
