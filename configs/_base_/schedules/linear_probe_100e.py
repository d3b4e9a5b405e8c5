# Linear-probe schedule (unilm beit/run_linear_eval.py): only the head trains (the
# backbone is frozen and the layer-decay constructor leaves frozen parameters out of the
# optimiser); AdamW lr 1e-3 per 256 images (4e-3 at 1024 = 8 GPUs x 128), weight decay
# 1e-4, cosine to 0 over 100 epochs, no warmup.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-3, weight_decay=1e-4),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0))
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min=0., by_epoch=True, begin=0, end=100,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=100, val_interval=5)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024)
