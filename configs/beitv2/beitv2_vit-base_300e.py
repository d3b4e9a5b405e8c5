# BEiT v2 ViT-B/16 pretraining on ImageNet-1k, 300 epochs (BEiT v2 paper; unilm beit2
# PRETRAINING.md): VQ-KD targets (the released CLIP-teacher
# tokenizer, 8192 codes), blockwise masking of exactly 75 of 196 patches, patch
# aggregation over layer 9's patch tokens with 2 extra blocks (two losses), shared
# relative position bias, LayerScale 0.1, no drop path; AdamW 1.5e-3 betas (0.9, 0.98),
# batch 2048, 10 warmup epochs, cosine to 1e-5, weight decay 0.05, clipping 3.0.
#
# Tokenizer: the official VQ-KD checkpoint (configs/tokenizers/vqkd_vit-base_clip_official.py)
# or one trained with configs/vqkd/ (point model.target_generator.checkpoint at it).
# Train: batch 2048 = 16 GPUs x 128 (tools/train.py scales the lr linearly to any other
# total batch and logs it). CONFIG = this file. Two machines: the same command on each,
# NODE_RANK=0 on host0 and NODE_RANK=1 on the other, same MASTER_ADDR and PORT.
#   16 GPUs:              bash tools/dist_train.sh CONFIG 16 --amp
#   8 GPUs, same recipe:  bash tools/dist_train.sh CONFIG 8 --amp --accumulate 2
#   2 machines x 8 GPUs:  NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 \
#                           bash tools/dist_train.sh CONFIG 8 --amp
#   2 machines x 4 GPUs:  the same with  CONFIG 4 --amp --accumulate 2
_base_ = [
    '../_base_/datasets/imagenet_beitv2_pretrain.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='BEiT',
    data_preprocessor=dict(
        type='MIMDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], patch_size=16),
    backbone=dict(
        type='BEiTViT', arch='base', img_size=224, patch_size=16, use_abs_pos_emb=False,
        rel_pos_bias='shared', layer_scale_init_value=0.1, drop_path_rate=0.,
        use_mask_token=True, final_norm=True, out_type='raw', with_cp=False),
    neck=dict(type='BEiTV2Neck', early_layers=9, num_layers=2, embed_dims=768, num_heads=12,
              feedforward_channels=3072, layer_scale_init_value=0.1, drop_path_rate=0.,
              backbone_layers=12),
    head=dict(type='MIMHead', in_channels=768, vocab_size=8192),
    target_generator=dict(
        type='VQKD', encoder=dict(arch='base', img_size=224, patch_size=16),
        quantizer=dict(num_tokens=8192, embed_dims=32), with_decoder=False,
        checkpoint='data/pretrained/vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth'),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05),
    # no weight decay for 1-D parameters, biases, pos_embed, cls_token (unilm optim_factory.py)
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
    clip_grad=dict(max_norm=3.0),
)
max_epochs = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-5 / 1.5e-3, by_epoch=True, begin=10,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=2048)

default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=10, max_keep_ckpts=3),
)
