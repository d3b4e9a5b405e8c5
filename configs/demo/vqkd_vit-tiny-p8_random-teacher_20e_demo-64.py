# Demo: train a tiny VQ-KD tokenizer on the bundled demo data, on a CPU in a few minutes.
# The same model and mechanisms as configs/vqkd/ (BEiTViT encoder, fp32 task layers,
# normalised-EMA quantizer with k-means init, BEiTViT decoder, cosine loss against a
# frozen teacher, CodebookUsageHook), only small. No teacher weights can be downloaded
# here, so the teacher is a frozen, randomly initialised ViT (seeded by the runner):
# its patch features are real functions of the image, so the loss and the codebook
# usage behave like in a real run, but the tokens are not semantic.
#
# Dead-code restart (off here, as in the paper) is shown by
#   python tools/train.py THIS_CONFIG --cfg-options model.quantizer.dead_code_threshold=1.0
_base_ = [
    '../_base_/datasets/demo_imagenet_64.py',
    '../_base_/default_runtime.py',
]

embed_dims = 128
model = dict(
    type='VQKD',
    # uint8 BGR from the loader -> RGB in [0, 1], the tokenizer's input range.
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[0., 0., 0.],
                           std=[255., 255., 255.], bgr_to_rgb=True),
    encoder=dict(arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                           feedforward_channels=4 * embed_dims),
                 img_size=64, patch_size=8),
    decoder=dict(arch=dict(embed_dims=embed_dims, num_layers=2, num_heads=4,
                           feedforward_channels=4 * embed_dims)),
    quantizer=dict(num_tokens=512, embed_dims=16, beta=1.0, decay=0.99, kmeans_init=True),
    # Any registered backbone can be the teacher; a BEiTViT without mean/std attributes
    # needs the normalisation given here.
    teacher=dict(type='BEiTViT',
                 arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4,
                           feedforward_channels=4 * embed_dims),
                 img_size=64, patch_size=8, use_abs_pos_emb=True, rel_pos_bias=None,
                 layer_scale_init_value=0., out_type='featmap', final_norm=True),
    teacher_mean=(0.485, 0.456, 0.406),
    teacher_std=(0.229, 0.224, 0.225),
)

# The tokenizer trains on images only.
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-4),
    # No weight decay on biases, norms, cls_token, pos_embed; the codebook is a buffer
    # moved by EMA, and the frozen teacher is left out.
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0),
)
max_epochs = 20
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.05, by_epoch=True, begin=2,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=32)

custom_hooks = [dict(type='CodebookUsageHook', window=20)]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=5, max_keep_ckpts=1),
)
