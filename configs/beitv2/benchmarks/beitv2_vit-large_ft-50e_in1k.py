# BEiT v2 ViT-L/16 fine-tuned on ImageNet-1k from our 300-epoch pretraining
# (configs/beitv2/beitv2_vit-large_300e.py; unilm beit2 README): AdamW lr 5e-4 at batch
# 1024 (2e-4 after 1600 epochs), 50 epochs, 5 warmup, layer decay 0.8, drop path 0.2.
# Paper: 86.6 top-1 (87.3 after 1600 epochs).
_base_ = [
    '../../_base_/models/beit_vit-base_cls.py',
    '../../_base_/datasets/imagenet_finetune_224.py',
    '../../_base_/schedules/finetune_in1k_100e.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        arch='large', layer_scale_init_value=1e-5, drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beitv2_vit-large_300e/epoch_300.pth')),
    head=dict(in_channels=1024))

optim_wrapper = dict(optimizer=dict(lr=5e-4), paramwise_cfg=dict(layer_decay_rate=0.8))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-6 / 5e-4, by_epoch=True, begin=5,
         end=50, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=50)
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='accuracy/top1'))
