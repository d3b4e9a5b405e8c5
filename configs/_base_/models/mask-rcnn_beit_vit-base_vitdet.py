# Mask R-CNN with a BEiT / BEiT v2 ViT-B/16 backbone, ViTDet style (Li et al. 2022,
# "Exploring Plain Vision Transformer Backbones for Object Detection"; detectron2
# projects/ViTDet configs mask_rcnn_vitdet_b_100ep.py). Facts and sources in
# docs/detection.md.
#
# - mmdet's RPNHead, StandardRoIHead, Shared4Conv1FCBBoxHead, FCNMaskHead as they are;
#   mmbeit's BEiTViT and SimpleFeaturePyramid; LayerNorm over channels (mmbeit.LN2d) in the
#   pyramid, the box head's 4 convs and the mask head's 4 convs (ViTDet §A.2).
# - mmbeit.MaskRCNN is mmdet's MaskRCNN whose heads stay in fp32 under --amp (mmcv's
#   RoIAlign and NMS have no bf16 kernels); the backbone and pyramid run in bf16. Without
#   --amp it is mmdet's model (mmbeit/models/detectors/mask_rcnn.py).
# - Backbone: the last block's map [B, 768, 64, 64] of a 1024 x 1024 input, no final norm,
#   per-layer relative position tables. Windowed attention (14 x 14 windows = the 224 px
#   pretraining grid, so window blocks load their tables unresized) in all blocks but
#   2, 5, 8, 11, which attend globally (ViTDet's "4 global blocks" for ViT-B, §3 and
#   Table 1a); their tables are resized 27x27 -> 127x127 by the load path.
# - Simple feature pyramid: strides 4, 8, 16, 32 (+64 by subsampling) from that one map,
#   256 channels.
# - RPN with 2 convs (detectron2 conv_dims=[-1, -1]), anchors 32..512 (scale 8 x strides
#   4..64), 3 aspect ratios; RoIAlign 7 (boxes) and 14 (masks), 512 RoIs a image at 25 %
#   positives; test: 1000 proposals, score 0.05, NMS 0.5, 100 detections.
# The leaf sets num_classes (80), drop path and the checkpoint.
norm_cfg = dict(type='mmbeit.LN2d', requires_grad=True)
model = dict(
    type='mmbeit.MaskRCNN', _scope_='mmdet',
    data_preprocessor=dict(
        type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=True,
        # test images (long side 1024) are padded to the 1024 x 1024 square, as detectron2's
        # ViTDet does (its backbone's square_pad); padding does not change img_shape, so
        # boxes are still clipped to the image. LSJ: every training batch is padded to the
        # full canvas too
        pad_size_divisor=1024,
        batch_augments=[dict(type='BatchFixedSizePad', size=(1024, 1024), pad_mask=True)]),
    backbone=dict(
        type='mmbeit.BEiTViT', arch='base', img_size=1024, patch_size=16,
        rel_pos_bias='per_layer', qv_bias=True, layer_scale_init_value=0.1,
        drop_path_rate=0.1, out_indices=[-1], out_type='featmap', final_norm=False,
        window_size=14, window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10]),
    neck=dict(type='mmbeit.SimpleFeaturePyramid', in_channels=768, out_channels=256,
              scale_factors=(4.0, 2.0, 1.0, 0.5), num_outs=5, norm_cfg=norm_cfg),
    rpn_head=dict(
        type='RPNHead', in_channels=256, feat_channels=256, num_convs=2,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead', in_channels=256, conv_out_channels=256,
            fc_out_channels=1024, roi_feat_size=7, num_classes=80, norm_cfg=norm_cfg,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=256, featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead', num_convs=4, in_channels=256, conv_out_channels=256,
            num_classes=80, norm_cfg=norm_cfg,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3,
                          min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                         add_gt_as_proposals=False),
            allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000,
                          nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,
                          min_pos_iou=0.5, match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                         add_gt_as_proposals=True),
            mask_size=28, pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7),
                 min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100,
                  mask_thr_binary=0.5)))
