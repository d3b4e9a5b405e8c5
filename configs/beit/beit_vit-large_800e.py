# BEiT (v1) ViT-L/16 pretraining on ImageNet-1k, 800 epochs: the base recipe with
# LayerScale 1e-5 and gradient clipping 1.0 (BEiT paper Table 12 / section 2.5;
# beit-spec.md 4.3). Gradient checkpointing saves memory at about 30% more time:
#   --cfg-options model.backbone.with_cp=True
_base_ = ['./beit_vit-base_800e.py']

model = dict(
    backbone=dict(arch='large', layer_scale_init_value=1e-5, with_cp=False),
    head=dict(in_channels=1024),
)
optim_wrapper = dict(clip_grad=dict(max_norm=1.0))
