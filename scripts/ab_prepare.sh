#!/usr/bin/env bash
# Same-machine A/B of two sctrain builds on h5ad -> batches: the binaries take turns, N fresh
# processes each, and the median and best `seconds_total` of each are printed.
#   scripts/ab_prepare.sh OLD/sctrain NEW/sctrain [FILE.h5ad] [N]
#   (default FILE ../shared/data/kang_pbmc_ctrl.h5ad, else data/pbmc3k_seurat.h5ad; N 21)
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 FILE=${3:-} N=${4:-21}
if [[ -z "$FILE" ]]; then
  FILE=../shared/data/kang_pbmc_ctrl.h5ad
  [[ -f "$FILE" ]] || FILE=data/pbmc3k_seurat.h5ad
fi
for _ in $(seq "$N"); do
  for bin in "$A" "$B"; do
    echo "$bin $("$bin" --log-level warn prepare --data "$FILE" --max-len 2048 --batch-size 32 --time-batches --json \
      2>/dev/null | tail -1)"
  done
done | python3 -c '
import json, statistics, sys
runs = {}
for line in sys.stdin:
    name, _, text = line.partition(" ")
    runs.setdefault(name, []).append(json.loads(text)["time_batches"]["seconds_total"])
for name, t in runs.items():
    print(f"{name}: median {statistics.median(t):.4f} s, best {min(t):.4f} s, {len(t)} runs")'
