# BEiT (v1) ViT-B/16 fine-tuned on ImageNet-1k from our 800-epoch pretraining
# (configs/beit/beit_vit-base_800e.py; BEiT paper Table 13): AdamW
# lr 4e-3 at batch 1024 (the paper sweeps 2e-3 to 5e-3), 100 epochs, 20 warmup, layer
# decay 0.65, drop path 0.1, RandAugment, Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
# RandomErasing 0.25. Paper: 83.2 top-1.
#
# Normalisation: ImageNet mean / std, as our v1 pretraining config uses. unilm's own v1
# checkpoints were pretrained with mean = std = 0.5; fine-tune those with
# --cfg-options model.data_preprocessor.mean=[127.5,127.5,127.5] \
#     model.data_preprocessor.std=[127.5,127.5,127.5]
_base_ = [
    '../../_base_/models/beit_vit-base_cls.py',
    '../../_base_/datasets/imagenet_finetune_224.py',
    '../../_base_/schedules/finetune_in1k_100e.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/beit_vit-base_800e/epoch_800.pth')),)

optim_wrapper = dict(optimizer=dict(lr=4e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-6 / 4e-3, by_epoch=True, begin=20,
         end=100, convert_to_iter_based=True),
]
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='accuracy/top1'))
