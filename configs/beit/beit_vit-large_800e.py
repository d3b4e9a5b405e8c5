# BEiT (v1) ViT-L/16 pretraining on ImageNet-1k, 800 epochs: the base recipe with
# LayerScale 1e-5 and gradient clipping 1.0 (BEiT paper Table 12 / section 2.5;
# unilm beit/README.md). Gradient checkpointing saves memory at about 30% more time:
#   --cfg-options model.backbone.with_cp=True
# Train: batch 2048 = 16 GPUs x 128 (tools/train.py scales the lr linearly to any other
# total batch and logs it). CONFIG = this file. Two machines: the same command on each,
# NODE_RANK=0 on host0 and NODE_RANK=1 on the other, same MASTER_ADDR and PORT.
#   16 GPUs:              bash tools/dist_train.sh CONFIG 16 --amp
#   8 GPUs, same recipe:  bash tools/dist_train.sh CONFIG 8 --amp --accumulate 2
#   2 machines x 8 GPUs:  NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 \
#                           bash tools/dist_train.sh CONFIG 8 --amp
#   2 machines x 4 GPUs:  the same with  CONFIG 4 --amp --accumulate 2
_base_ = ['./beit_vit-base_800e.py']

model = dict(
    backbone=dict(arch='large', layer_scale_init_value=1e-5, with_cp=False),
    head=dict(in_channels=1024),
)
optim_wrapper = dict(clip_grad=dict(max_norm=1.0))
