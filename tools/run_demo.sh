#!/usr/bin/env bash
# The main job of the README quick start, on the bundled demo data:
#   bash tools/run_demo.sh [extra tools/train.py options for every step]
# installs what is missing, writes the demo data (data/demo, once), then, on this machine
# (CPU or one GPU), into a fresh work dir:
#   1. fits the demo's HOG tokenizer on the pretraining views (tools/misc/fit_hog_tokenizer.py);
#   2. pretrains a tiny ViT with BEiT v2's algorithm on those tokens (150 epochs), in bf16
#      mixed precision (--amp) where the machine runs bf16 natively (a CUDA GPU, or a CPU
#      with AVX512-BF16 / AMX), else in fp32; DEMO_AMP=0 forces fp32; its kNN monitor
#      (KNNMonitorHook, docs/monitoring.md) logs the features' kNN accuracy on the demo's
#      labelled images every 10 epochs, and curves.png draws it next to the losses;
#   3. classification: fine-tunes the pretrained model, and trains the same classifier
#      from scratch with the same budget;
#   4. segmentation (UperNet): the same pair, pretrained and from scratch;
#   5. prints the pretrained-vs-scratch table (top-1, mIoU) and writes it to
#      WORK_DIR/transfer.md.
# DEMO_DETECTION=1 adds 6. detection and instance segmentation (Mask R-CNN, ViTDet style,
# on the demo COCO-layout data): the same pair, with box / mask AP in a second table
# (WORK_DIR/transfer_detection.md). It is opt-in because it more than doubles the demo's
# time on two CPU cores (~40 more minutes; numbers in configs/demo/README.md).
# Why HOG tokens and not a VQ-KD's: configs/demo/README.md (the VQ-KD demo tokenizer, which
# can only distil a random teacher here, is its own config there).
# work_dirs/demo/latest points at the newest run (the demo transfer configs' default
# pretraining checkpoint is work_dirs/demo/latest/pretrain/epoch_150.pth).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
bash tools/install.sh
"$PY" tools/misc/make_demo_data.py --out data/demo
WORK_DIR="work_dirs/demo/$(date +%Y%m%d_%H%M%S)"

PRETRAIN_CFG=configs/demo/beitv2_vit-tiny-p8_hog-tokens_150e_demo-64.py
AMP=()
if [[ "${DEMO_AMP:-1}" != 0 ]] && "$PY" -c 'import sys, torch; sys.exit(not (
        torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()))'; then
    AMP=(--amp bf16)  # same losses as fp32 to 4 digits, 1.25x faster here (configs/demo/README.md)
fi
"$PY" tools/misc/fit_hog_tokenizer.py "$PRETRAIN_CFG" --out "$WORK_DIR/hog_tokens.pth"
"$PY" tools/train.py "$PRETRAIN_CFG" --work-dir "$WORK_DIR/pretrain" "${AMP[@]}" "$@" --cfg-options \
    "model.target_generator.checkpoint=$WORK_DIR/hog_tokens.pth"
"$PY" tools/analysis_tools/plot_curves.py "$WORK_DIR/pretrain" --out "$WORK_DIR/pretrain/curves.png"

PRETRAINED="$(cat "$WORK_DIR/pretrain/last_checkpoint")"
ln -sfn "$(basename "$WORK_DIR")" work_dirs/demo/latest

FROM_PRETRAINED=(--cfg-options "model.backbone.init_cfg.checkpoint=$PRETRAINED")
"$PY" tools/train.py configs/demo/beitv2_vit-tiny-p8_ft-30e_demo-64.py \
    --work-dir "$WORK_DIR/cls_pretrained" "$@" "${FROM_PRETRAINED[@]}"
"$PY" tools/train.py configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py \
    --work-dir "$WORK_DIR/cls_scratch" "$@"
"$PY" tools/train.py configs/demo/beitv2_vit-tiny-p8_upernet-1k_demo-ade-128.py \
    --work-dir "$WORK_DIR/seg_pretrained" "$@" "${FROM_PRETRAINED[@]}"
"$PY" tools/train.py configs/demo/beit_vit-tiny-p8_upernet-scratch-1k_demo-ade-128.py \
    --work-dir "$WORK_DIR/seg_scratch" "$@"

echo "[run_demo] pretrained vs scratch (demo val sets):"
"$PY" tools/analysis_tools/compare_runs.py --out "$WORK_DIR/transfer.md" \
    "classification, pretrained (HOG tokens)=$WORK_DIR/cls_pretrained" \
    "classification, scratch=$WORK_DIR/cls_scratch" \
    "segmentation, pretrained (HOG tokens)=$WORK_DIR/seg_pretrained" \
    "segmentation, scratch=$WORK_DIR/seg_scratch"
if [[ "${DEMO_DETECTION:-0}" != 0 ]]; then
    "$PY" tools/train.py configs/demo/beitv2_vit-tiny-p8_mask-rcnn_demo-coco-128.py \
        --work-dir "$WORK_DIR/det_pretrained" "$@" "${FROM_PRETRAINED[@]}"
    "$PY" tools/train.py configs/demo/beit_vit-tiny-p8_mask-rcnn-scratch_demo-coco-128.py \
        --work-dir "$WORK_DIR/det_scratch" "$@"
    echo "[run_demo] detection, pretrained vs scratch (demo COCO val, AP in %):"
    "$PY" tools/analysis_tools/compare_runs.py --out "$WORK_DIR/transfer_detection.md" \
        --metrics coco/bbox_mAP coco/segm_mAP --percent \
        "Mask R-CNN, pretrained (HOG tokens)=$WORK_DIR/det_pretrained" \
        "Mask R-CNN, scratch=$WORK_DIR/det_scratch"
fi
echo "[run_demo] done: logs and checkpoints in $WORK_DIR/" \
    "{hog_tokens.pth,pretrain,cls_pretrained,cls_scratch,seg_pretrained,seg_scratch}"
