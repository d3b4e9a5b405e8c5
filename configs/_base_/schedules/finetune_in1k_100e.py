# Fine-tuning schedule of the BEiT / BEiT v2 recipes (unilm run_class_finetuning.py): AdamW
# (weight decay 0.05, none on 1-D parameters, biases, pos_embed, cls_token) through
# mmbeit's layer-decay constructor, 20 warmup epochs from about 0, then per-step cosine
# to 1e-6 (scaled per layer group, as unilm does), 100 epochs at batch 1024 (8 GPUs x
# 128; tools/train.py rescales lr for another total). The lr here is v2 base's;
# leaves set their own lr (and eta_min_ratio = 1e-6 / lr), layer decay and length.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.65))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-6 / 5e-4, by_epoch=True, begin=20,
         end=100, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=100, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024)
