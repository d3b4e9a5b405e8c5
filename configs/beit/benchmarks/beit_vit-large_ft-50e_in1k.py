# BEiT (v1) ViT-L/16 fine-tuned on ImageNet-1k from our 800-epoch pretraining
# (configs/beit/beit_vit-large_800e.py; BEiT paper Table 13): 50
# epochs, 5 warmup, layer decay 0.75, drop path 0.1, batch 1024. The paper sweeps lr over
# 2e-3 to 5e-3 without saying which won; 2e-3 here. Paper: 85.2 top-1 at 224.
_base_ = [
    '../../_base_/models/beit_vit-base_cls.py',
    '../../_base_/datasets/imagenet_finetune_224.py',
    '../../_base_/schedules/finetune_in1k_100e.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        arch='large', layer_scale_init_value=1e-5, drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beit_vit-large_800e/epoch_800.pth')),
    head=dict(in_channels=1024))

optim_wrapper = dict(optimizer=dict(lr=2e-3), paramwise_cfg=dict(layer_decay_rate=0.75))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-6 / 2e-3, by_epoch=True, begin=5,
         end=50, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=50)
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='accuracy/top1'))
