#!/usr/bin/env bash
# A local Ray head on free ports, so `ray job submit` works exactly as on a cluster. It prints the address to submit
# to and runs until Ctrl-C (or SIGTERM), then stops this head and only it (never `ray stop`, which would end every Ray
# process on the machine):
#   scripts/local-ray-head.sh &        # prints RAY_ADDRESS=http://127.0.0.1:<port>
#   ray job submit --address http://127.0.0.1:<port> --working-dir . \
#       --runtime-env-json '{"excludes": [".venv", ".git"]}' -- python -m engine run --config configs/demo.yaml
# WORKERS=2 GPUS_PER_WORKER=1 adds worker nodes that declare GPUs (lane placement without GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || { echo "error: $PY not found; run 'make install' first (or set PY=path/to/python)" >&2; exit 2; }
exec "$PY" scripts/local_cluster.py --head-cpus "${NUM_CPUS:-$(nproc)}" --workers "${WORKERS:-0}" \
  --gpus-per-worker "${GPUS_PER_WORKER:-0}"
