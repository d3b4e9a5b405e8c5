# BEiT v2 ViT-L/16, 300 epochs: patch aggregation over layer 21 of 24, LayerScale 1e-5,
# betas (0.9, 0.98), no drop path (unilm beit2 PRETRAINING.md; beit-spec.md 4.3). The
# tokenizer is the same base-size VQ-KD (BEiT v2 paper section 3.1). Gradient checkpointing:
#   --cfg-options model.backbone.with_cp=True
_base_ = ['./beitv2_vit-base_300e.py']

model = dict(
    backbone=dict(arch='large', layer_scale_init_value=1e-5, with_cp=False),
    neck=dict(early_layers=21, embed_dims=1024, num_heads=16, feedforward_channels=4096,
              layer_scale_init_value=1e-5, backbone_layers=24),
    head=dict(in_channels=1024),
)
