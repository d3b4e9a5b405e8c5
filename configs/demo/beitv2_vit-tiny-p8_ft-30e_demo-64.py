# Demo: fine-tune the demo pretraining checkpoint (BEiT v2 algorithm on HOG tokens,
# beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py) as a classifier on the bundled demo data.
# Everything but the start point equals the scratch baseline
# (beit_vit-tiny-p8_scratch-30e_demo-64.py: model, data, 30 epochs, lr, drop path), so the
# two rows of configs/demo/README.md differ only by pretraining and what fine-tuning
# from it asks for: layer-wise lr decay 0.65 and a head initialised 1000x smaller.
#
# The checkpoint is the pretraining run's own file, loaded without a conversion step:
# keys under `backbone.`, the shared relative position table expanded into per-layer
# tables, mask token, final norm, v2 neck and MIM head left out (the log lists each
# step). tools/run_demo.sh passes its run's file; by hand:
#   python tools/train.py THIS_CONFIG \
#       --cfg-options model.backbone.init_cfg.checkpoint=WORK_DIR/pretrain/epoch_150.pth
_base_ = ['./beit_vit-tiny-p8_scratch-30e_demo-64.py']

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', prefix='backbone.',
                                checkpoint='work_dirs/demo/latest/pretrain/epoch_150.pth')),
    # unilm's --init_scale 0.001 on a trunc-normal(0.02) head
    head=dict(init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02 * 0.001)),
)
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65))
