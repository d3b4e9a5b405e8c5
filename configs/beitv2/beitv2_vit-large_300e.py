# BEiT v2 ViT-L/16, 300 epochs: patch aggregation over layer 21 of 24, LayerScale 1e-5,
# betas (0.9, 0.98), no drop path (unilm beit2 PRETRAINING.md). The
# tokenizer is the same base-size VQ-KD (BEiT v2 paper section 3.1). Gradient checkpointing:
#   --cfg-options model.backbone.with_cp=True
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
    backbone=dict(arch='large', layer_scale_init_value=1e-5, with_cp=False),
    neck=dict(early_layers=21, embed_dims=1024, num_heads=16, feedforward_channels=4096,
              layer_scale_init_value=1e-5, backbone_layers=24),
    head=dict(in_channels=1024),
)
