# ADE20K UperNet schedule of the BEiT recipes (unilm beit/semantic_segmentation): AdamW (betas 0.9,
# 0.999; weight decay 0.05) with layer-wise lr decay from mmbeit's constructor (the same
# layer ids as classification), linear warmup over 1500 iterations from 1e-6 of the lr,
# then linear (poly 1.0) decay to 0 at 160k iterations; batch 16 (8 GPUs x 2). Leaves set
# lr and layer decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.75))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=16)
log_processor = dict(by_epoch=False)
