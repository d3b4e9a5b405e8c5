#!/usr/bin/env bash
# The main job of the README quick start, on the bundled demo data:
#   bash tools/run_demo.sh [extra tools/train.py options for every step]
# installs what is missing, writes the demo data (data/demo, once), then, on this machine
# (CPU or one GPU), into a fresh work dir:
#   1. trains the demo VQ-KD tokenizer and reports its codebook usage on the val images;
#   2. pretrains a tiny BEiT v2 with that tokenizer's tokens as targets;
#   3. trains the demo classifier from scratch and evaluates it (the baseline that
#      fine-tuning the pretrained model is compared against).
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

CLASSIFIER_CFG=configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py
"$PY" tools/train.py "$CLASSIFIER_CFG" --work-dir "$WORK_DIR/classifier" "$@"
echo "[run_demo] done: logs and checkpoints in $WORK_DIR/{tokenizer,pretrain,classifier}"
