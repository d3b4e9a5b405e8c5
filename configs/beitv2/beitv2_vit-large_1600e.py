# BEiT v2 ViT-L/16, 1600 epochs: the large 300-epoch recipe with betas (0.9, 0.999) and
# drop path 0.1 (unilm beit2 PRETRAINING.md; beit-spec.md 4.3).
_base_ = ['./beitv2_vit-large_300e.py']

model = dict(
    backbone=dict(drop_path_rate=0.1),
    neck=dict(drop_path_rate=0.1),
)
optim_wrapper = dict(optimizer=dict(betas=(0.9, 0.999)))
max_epochs = 1600
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-5 / 1.5e-3, by_epoch=True, begin=10,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(checkpoint=dict(interval=50))
