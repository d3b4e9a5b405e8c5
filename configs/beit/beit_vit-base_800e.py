# BEiT (v1) ViT-B/16 pretraining on ImageNet-1k, 800 epochs (BEiT paper section 2.5 and
# Table 12; unilm beit/README.md): DALL-E dVAE targets on a 14 x 14 grid, blockwise
# masking of about 75 of 196 patches (may stop short, as in the paper; the ratio
# 75/196 carries over to other input sizes), shared relative
# position bias, LayerScale 0.1, drop path 0.1; AdamW 1.5e-3, batch 2048, 10 warmup
# epochs, cosine to 1e-5, weight decay 0.05, gradient clipping 3.0.
#
# Tokenizer weights: data/pretrained/dall_e/dalle_encoder.pth (OpenAI's encoder.pkl
# converted once), see configs/tokenizers/.
# Train: batch 2048 = 16 GPUs x 128 (tools/train.py scales the lr linearly to any other
# total batch and logs it). CONFIG = this file. Two machines: the same command on each,
# NODE_RANK=0 on host0 and NODE_RANK=1 on the other, same MASTER_ADDR and PORT.
#   16 GPUs:              bash tools/dist_train.sh CONFIG 16 --amp
#   8 GPUs, same recipe:  bash tools/dist_train.sh CONFIG 8 --amp --accumulate 2
#   2 machines x 8 GPUs:  NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 \
#                           bash tools/dist_train.sh CONFIG 8 --amp
#   2 machines x 4 GPUs:  the same with  CONFIG 4 --amp --accumulate 2
_base_ = [
    '../_base_/datasets/imagenet_beit_pretrain.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='BEiT',
    data_preprocessor=dict(
        type='MIMDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], patch_size=16),
    backbone=dict(
        type='BEiTViT', arch='base', img_size=224, patch_size=16, use_abs_pos_emb=False,
        rel_pos_bias='shared', layer_scale_init_value=0.1, drop_path_rate=0.1,
        use_mask_token=True, final_norm=True, out_type='raw', with_cp=False),
    neck=None,
    head=dict(type='MIMHead', in_channels=768, vocab_size=8192),
    target_generator=dict(
        type='DALLETokenizer', input_size=112,
        encoder_checkpoint='data/pretrained/dall_e/dalle_encoder.pth'),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    # no weight decay for 1-D parameters, biases, pos_embed, cls_token (unilm optim_factory.py);
    # mask_token and the relative position table keep it
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
    clip_grad=dict(max_norm=3.0),
)
max_epochs = 800
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-5 / 1.5e-3, by_epoch=True, begin=10,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
# The recipe's batch; tools/train.py scales the lr linearly to another total batch
# (processes x batch x accumulation; --no-scale-lr keeps 1.5e-3).
auto_scale_lr = dict(base_batch_size=2048)

default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=20, max_keep_ckpts=3),
)
