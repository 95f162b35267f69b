#!/usr/bin/env bash
# Quickstart: build (installing what is missing), then pretrain the tiny quickstart model
# on the embedded PBMC 3k data (data/pbmc3k_seurat.h5ad) for 100 steps on one CPU core.
# Ends with where the checkpoint and metrics are and how the loss fell.
#   scripts/quickstart.sh                # a fresh run into runs/quickstart
#   scripts/quickstart.sh --resume       # continue an interrupted one
# Extra arguments go to `sctrain pretrain` (e.g. --set train.max_steps=200).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
build="${SCTRAIN_BUILD_DIR:-$root/build}"
out="${OUT:-runs/quickstart}"
resume=0
for a in "$@"; do [ "$a" = "--resume" ] && resume=1; done
if [ "$resume" = 0 ] && [ -d "$out/checkpoints" ]; then
  echo "[quickstart] $out holds an earlier run: starting over (pass --resume to continue it)"
  rm -rf "$out"
fi
exec "$build/sctrain" pretrain --config configs/quickstart.yaml --out "$out" "$@"
