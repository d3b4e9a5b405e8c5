# ViTDet's 100-epoch COCO schedule (Li et al. 2022 §4 and Appendix A.2; detectron2
# projects/ViTDet mask_rcnn_vitdet_b_100ep.py): batch 64, 184375 iterations (~100
# epochs of 118k images), AdamW (betas 0.9, 0.999; weight decay 0.1) with layer-wise lr
# decay (mmbeit's constructor: 0.7 for ViT-B, 0.8 for ViT-L, set by the leaf); the
# pyramid and heads get the full lr. Weight decay is off for 1-D parameters (norms, layer
# scales, biases), pos_embed and cls_token, as in our fine-tuning; detectron2 exempts
# norms and pos_embed only, so conv / linear biases there do decay. Linear warmup over
# 250 iterations from 0.001 of the lr, then x0.1 at iterations 163889 and 177546 (88.9 %
# and 96.3 %).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.7))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=184375,
         milestones=[163889, 177546], gamma=0.1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=184375, val_interval=18438)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=64)
log_processor = dict(by_epoch=False)
