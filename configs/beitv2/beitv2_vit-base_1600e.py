# BEiT v2 ViT-B/16, 1600 epochs: the 300-epoch recipe with betas (0.9, 0.999) and drop
# path 0.1 (unilm beit2 PRETRAINING.md).
# Train: batch 2048 = 16 GPUs x 128 (tools/train.py scales the lr linearly to any other
# total batch and logs it). CONFIG = this file. Two machines: the same command on each,
# NODE_RANK=0 on host0 and NODE_RANK=1 on the other, same MASTER_ADDR and PORT.
#   16 GPUs:              bash tools/dist_train.sh CONFIG 16 --amp
#   8 GPUs, same recipe:  bash tools/dist_train.sh CONFIG 8 --amp --accumulate 2
#   2 machines x 8 GPUs:  NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 \
#                           bash tools/dist_train.sh CONFIG 8 --amp
#   2 machines x 4 GPUs:  the same with  CONFIG 4 --amp --accumulate 2
_base_ = ['./beitv2_vit-base_300e.py']

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
