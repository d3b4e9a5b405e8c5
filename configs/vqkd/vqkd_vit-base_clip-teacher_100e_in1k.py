# VQ-KD tokenizer of BEiT v2 (paper section 2.2), the released recipe (unilm beit2 TOKENIZER.md):
# ViT-B/16 encoder, 8192 x 32 normalised-EMA codebook with k-means init, 3-block decoder,
# CLIP ViT-B/16 teacher (512-d patch features), ImageNet-1k, 100 epochs, batch 512
# (8 GPUs x 64), AdamW 2e-4 (5e-5 per 128 images), 10 warmup epochs, cosine to 1e-5.
#
# Teacher weights: OpenAI's ViT-B-16.pt converted once with
#   python tools/model_converters/clip_to_state_dict.py ViT-B-16.pt \
#       data/pretrained/clip_vit-base-p16_openai.pth
# Train: bash tools/dist_train.sh configs/vqkd/vqkd_vit-base_clip-teacher_100e_in1k.py 8
_base_ = [
    '../_base_/datasets/imagenet_vqkd.py',
    '../_base_/default_runtime.py',
]

model = dict(
    type='VQKD',
    # uint8 BGR from the loader -> RGB in [0, 1], the tokenizer's input range.
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[0., 0., 0.],
                           std=[255., 255., 255.], bgr_to_rgb=True),
    encoder=dict(arch='base', img_size=224, patch_size=16, drop_path_rate=0.),
    decoder=dict(arch=dict(embed_dims=768, num_layers=3, num_heads=12,
                           feedforward_channels=3072)),
    quantizer=dict(num_tokens=8192, embed_dims=32, beta=1.0, decay=0.99, kmeans_init=True,
                   dead_code_threshold=0.),
    teacher=dict(type='CLIPViT', arch='base', img_size=224, patch_size=16,
                 checkpoint='data/pretrained/clip_vit-base-p16_openai.pth'),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-4),
    # No weight decay on biases, norms, cls_token and pos_embed; the codebook is a buffer
    # moved by EMA and the frozen teacher is not optimised.
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
)
max_epochs = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    # min lr 1e-5 = 0.05 x peak
    dict(type='CosineAnnealingLR', eta_min_ratio=0.05, by_epoch=True, begin=10,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
# tools/train.py rescales the lr linearly from this total batch size (--no-scale-lr: off).
auto_scale_lr = dict(base_batch_size=512)

custom_hooks = [dict(type='CodebookUsageHook', window=100)]
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=5, max_keep_ckpts=3),
)
