# BEiT v2 ViT-B/16 fine-tuned on ImageNet-1k from our 300-epoch pretraining
# (configs/beitv2/beitv2_vit-base_300e.py; unilm beit2
# get_started_for_image_classification.md): AdamW lr 5e-4 at batch 1024, 100 epochs,
# 20 warmup, layer decay 0.65, drop path 0.1, RandAugment, Mixup 0.8 / CutMix 1.0, label
# smoothing 0.1, RandomErasing 0.25. Paper: 85.0 top-1 (85.5 after 1600 epochs with
# layer_decay_rate=0.6 and drop_path_rate=0.2).
#
# The backbone loads the pretraining run's checkpoint as written (no conversion); point
# it elsewhere with --cfg-options model.backbone.init_cfg.checkpoint=PATH (an official
# unilm file in its own layout works too).
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
                      checkpoint='work_dirs/beitv2_vit-base_300e/epoch_300.pth')),)
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='accuracy/top1'))
