#!/usr/bin/env bash
# The main job of the README quick start, on the bundled demo data:
#   bash tools/run_demo.sh [extra tools/train.py options for every step]
# installs what is missing, writes the demo data (data/demo, once), then, on this machine
# (CPU or one GPU), into a fresh work dir:
#   1. trains the demo VQ-KD tokenizer and reports its codebook usage on the val images;
#   2. pretrains a tiny BEiT v2 with that tokenizer's tokens as targets;
#   3. classification: fine-tunes the pretrained model, and trains the same classifier
#      from scratch with the same budget;
#   4. segmentation (UperNet): the same pair, pretrained and from scratch;
#   5. prints the pretrained-vs-scratch table (top-1, mIoU) and writes it to
#      WORK_DIR/transfer.md.
# work_dirs/demo/latest points at the newest run (the demo transfer configs' default
# pretraining checkpoint is work_dirs/demo/latest/pretrain/epoch_30.pth).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
bash tools/install.sh
"$PY" tools/misc/make_demo_data.py --out data/demo
WORK_DIR="work_dirs/demo/$(date +%Y%m%d_%H%M%S)"

TOKENIZER_CFG=configs/demo/vqkd_vit-tiny-p8_random-teacher_20e_demo-64.py
"$PY" tools/train.py "$TOKENIZER_CFG" --work-dir "$WORK_DIR/tokenizer" "$@"
"$PY" tools/analysis_tools/tokenize_images.py "$TOKENIZER_CFG" data/demo/imagenet/val \
    --checkpoint "$(cat "$WORK_DIR/tokenizer/last_checkpoint")" --out-dir "$WORK_DIR/tokenizer/val_tokens"

PRETRAIN_CFG=configs/demo/beitv2_vit-tiny-p8_vqkd-demo_30e_demo-64.py
"$PY" tools/train.py "$PRETRAIN_CFG" --work-dir "$WORK_DIR/pretrain" "$@" --cfg-options \
    "model.target_generator.checkpoint=$(cat "$WORK_DIR/tokenizer/last_checkpoint")"
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
    "classification, BEiT v2 pretrained=$WORK_DIR/cls_pretrained" \
    "classification, scratch=$WORK_DIR/cls_scratch" \
    "segmentation, BEiT v2 pretrained=$WORK_DIR/seg_pretrained" \
    "segmentation, scratch=$WORK_DIR/seg_scratch"
echo "[run_demo] done: logs and checkpoints in $WORK_DIR/" \
    "{tokenizer,pretrain,cls_pretrained,cls_scratch,seg_pretrained,seg_scratch}"
