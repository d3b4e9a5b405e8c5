#!/usr/bin/env bash
# The main job of the README quick start, on the bundled demo data:
#   bash tools/run_demo.sh
# installs what is missing, writes the demo data (data/demo, once), then trains the
# demo config on this machine (CPU or one GPU) into a fresh work dir and evaluates it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
bash tools/install.sh
"$PY" tools/misc/make_demo_data.py --out data/demo
CONFIG=configs/demo/beit_vit-tiny-p8_scratch-30e_demo-64.py
WORK_DIR="work_dirs/demo/$(date +%Y%m%d_%H%M%S)"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
echo "[run_demo] done: logs and checkpoints in $WORK_DIR"
