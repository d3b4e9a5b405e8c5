# Demo: UperNet segmentation from the demo pretraining checkpoint (HOG tokens) on the
# demo data (ADE20K layout, 128 px). Everything but the start point equals the scratch
# baseline (beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py: model, data, 1000
# iterations, lr), plus layer-wise lr decay 0.65 for the pretrained backbone.
#
# The pretraining ran at 64 px (8 x 8 patches); this backbone is built for 128 px
# (16 x 16): the load path expands the shared relative position table into per-layer
# tables and resizes them (geometric-progression bicubic) from the checkpoint itself.
# tools/run_demo.sh passes its run's file; by hand:
#   python tools/train.py THIS_CONFIG \
#       --cfg-options model.backbone.init_cfg.checkpoint=WORK_DIR/pretrain/epoch_150.pth
_base_ = ['./beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py']

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', prefix='backbone.',
                                checkpoint='work_dirs/demo/latest/pretrain/epoch_150.pth')))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65))
