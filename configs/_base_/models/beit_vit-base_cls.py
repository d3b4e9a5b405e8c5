# BEiT / BEiT v2 ViT-B/16 image classifier for fine-tuning (unilm modeling_finetune.py):
# mmpretrain's ImageClassifier around mmbeit's BEiTViT with per-layer relative position
# bias, q/v bias, LayerScale and mean pooling through fc_norm; a linear head initialised
# 1000x smaller than trunc-normal(0.02) (unilm's --init_scale 0.001); label smoothing
# 0.1, Mixup 0.8 / CutMix 1.0 (one of the two per batch, as timm's switch prob 0.5).
# The backbone is loaded from a pretraining checkpoint by its init_cfg (set in the leaf).
model = dict(
    type='ImageClassifier', _scope_='mmpretrain',
    data_preprocessor=dict(
        type='ClsDataPreprocessor', num_classes=1000, to_rgb=True,
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    backbone=dict(
        type='mmbeit.BEiTViT', arch='base', img_size=224, patch_size=16,
        rel_pos_bias='per_layer', qv_bias=True, layer_scale_init_value=0.1,
        drop_path_rate=0.1, out_type='avg_featmap'),
    neck=None,
    head=dict(
        type='LinearClsHead', num_classes=1000, in_channels=768,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02 * 0.001)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
