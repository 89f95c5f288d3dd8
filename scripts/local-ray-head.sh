#!/usr/bin/env bash
# Start a local Ray head with the dashboard on 127.0.0.1:8265, so `ray job submit` works exactly as on a cluster:
#   scripts/local-ray-head.sh && ray job submit --address http://127.0.0.1:8265 --working-dir . \
#       --runtime-env-json '{"excludes": [".venv", ".git"]}' -- python -m engine run --config configs/demo.yaml
# Stop it with `ray stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
RAY="${RAY:-.venv/bin/ray}"
[ -x "$RAY" ] || { echo "error: $RAY not found; run 'make install' first (or set RAY=path/to/ray)" >&2; exit 2; }
"$RAY" start --head --num-cpus="${NUM_CPUS:-$(nproc)}" --include-dashboard=true --dashboard-host=127.0.0.1 \
  --node-ip-address=127.0.0.1 --disable-usage-stats
echo "Ray head up: dashboard http://127.0.0.1:8265 (RAY_ADDRESS=http://127.0.0.1:8265 for ray job submit)"
