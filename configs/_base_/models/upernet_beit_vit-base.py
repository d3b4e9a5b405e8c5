# UperNet with a BEiT / BEiT v2 ViT-B/16 backbone for ADE20K (unilm beit/semantic_segmentation):
# mmseg's EncoderDecoder; mmbeit's BEiTViT (per-layer relative position bias, no absolute
# position embedding, raw block outputs of blocks 4, 6, 8, 12 as [B, 768, H/16, W/16]);
# mmseg's Feature2Pyramid (4x: ConvT-BN-GELU-ConvT, 2x: ConvT, 1x, 1/2x: max-pool) to
# strides 4 / 8 / 16 / 32; UPerHead (768 channels, pool scales 1, 2, 3, 6) and an FCN
# auxiliary head on the stride-16 map (weight 0.4). The leaf sets img_size / crop.
# SyncBN: on a CPU or in one process the tools use BN instead and log it.
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder', _scope_='mmseg',
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
        size=(512, 512)),
    backbone=dict(
        type='mmbeit.BEiTViT', arch='base', img_size=512, patch_size=16,
        rel_pos_bias='per_layer', qv_bias=True, layer_scale_init_value=0.1,
        drop_path_rate=0.1, out_indices=[3, 5, 7, 11], out_type='featmap'),
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5],
              norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead', in_channels=[768, 768, 768, 768], in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6), channels=768, dropout_ratio=0.1, num_classes=150,
        norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead', in_channels=768, in_index=2, channels=256, num_convs=1,
        concat_input=False, dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)),
)
