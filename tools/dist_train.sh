#!/usr/bin/env bash
# Multi-process training: bash tools/dist_train.sh CONFIG GPUS [train.py args]
# GPUS is the number of processes on this machine: one per GPU, or CPU ranks (gloo) on a
# machine without CUDA. Several machines: run the same command on each with NNODES (number
# of machines), NODE_RANK (0 .. NNODES-1), MASTER_ADDR (address of the NODE_RANK=0 machine)
# and the same free PORT, e.g. 16 GPUs on two machines of 8:
#   host0$ NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 PORT=29500 bash tools/dist_train.sh CONFIG 8
#   host1$ NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 PORT=29500 bash tools/dist_train.sh CONFIG 8
# The lr follows the total batch NNODES x GPUS x batch [x --accumulate K] (train.py logs it).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash tools/dist_train.sh CONFIG GPUS [train.py args ...]" >&2; exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
if ! [[ "$NNODES" =~ ^[1-9][0-9]*$ ]]; then
  echo "dist_train.sh: NNODES=$NNODES must be the number of machines (1 or more)" >&2; exit 2
fi
if [[ "$NNODES" -gt 1 && -z "${MASTER_ADDR:-}" ]]; then
  echo "dist_train.sh: NNODES=$NNODES needs MASTER_ADDR, the address of the NODE_RANK=0" \
       "machine, set to the same value on every machine" >&2; exit 2
fi
if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || [[ "$NODE_RANK" -ge "$NNODES" ]]; then
  echo "dist_train.sh: NODE_RANK=$NODE_RANK must be one of 0 .. $((NNODES - 1)) (NNODES=$NNODES)" >&2
  exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# One OpenMP thread per rank unless asked otherwise: N ranks x all cores oversubscribes.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec python -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$GPUS" --master_port="$PORT" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
