#!/usr/bin/env bash
# Data pipeline benchmark: h5ad -> rank tokens -> padded, masked batches of 32, one epoch,
# timed inside each program (process start and imports excluded); the two take turns, REPEATS
# runs each; prints the best and the median of each and their ratios.
#   ours:   sctrain prepare --data FILE --time-batches --json
#   Python: scripts/tokenize_baseline.py FILE --batches --json   (anndata + numpy)
# Both map genes through data/genes/human_genes.tsv, compute medians over the file, rank,
# truncate to MAX_LEN and build the batches; the tokens are identical (tests/data checks it).
#
#   scripts/bench_tokenize.sh [FILE.h5ad]     (default ../shared/data/kang_pbmc_ctrl.h5ad,
#                                              else data/pbmc3k_seurat.h5ad)
# Environment: SCTRAIN (default build/sctrain), PYTHON (a Python with anndata; default
# .deps/peers/bin/python from scripts/setup_peers.sh), MAX_LEN (2048), BATCH (32), REPEATS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:-}
if [[ -z "$FILE" ]]; then
  FILE=../shared/data/kang_pbmc_ctrl.h5ad
  [[ -f "$FILE" ]] || FILE=data/pbmc3k_seurat.h5ad
fi
SCTRAIN=${SCTRAIN:-build/sctrain}
PYTHON=${PYTHON:-$("$(dirname "$0")/setup_peers.sh")}
MAX_LEN=${MAX_LEN:-2048}
BATCH=${BATCH:-32}
REPEATS=${REPEATS:-3}
[[ -x "$SCTRAIN" ]] || { echo "no $SCTRAIN: build it (cmake --build build --target sctrain) or set SCTRAIN" >&2; exit 1; }

# Ours and Python take turns, REPEATS times each, so that both meet the same machine (on a shared
# VM its speed drifts by 10-20% over minutes); each run's JSON line goes to a temp file.
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
echo "file: $FILE   max_len: $MAX_LEN   batch: $BATCH   $REPEATS turns each   cores: $(nproc)"
for _ in $(seq "$REPEATS"); do
  echo "ours $("$SCTRAIN" --log-level warn prepare --data "$FILE" --max-len "$MAX_LEN" --batch-size "$BATCH" \
       --time-batches --json 2>/dev/null | tail -1)" >>"$runs"
  echo "python $("$PYTHON" scripts/tokenize_baseline.py "$FILE" --max-len "$MAX_LEN" --batch-size "$BATCH" --batches \
       --json 2>/dev/null | tail -1)" >>"$runs"
done
"$PYTHON" - "$runs" <<'PYEOF'
import json, statistics, sys
ours, py = [], []
for line in open(sys.argv[1]):
    who, _, text = line.partition(" ")
    (ours if who == "ours" else py).append(json.loads(text))
secs_o = [o["time_batches"]["seconds_total"] for o in ours]
secs_p = [p["seconds"] for p in py]
o, p = ours[secs_o.index(min(secs_o))], py[secs_p.index(min(secs_p))]
rows = [("sctrain (C++)", o["n_cells"], o["time_batches"]["tokens"], min(secs_o), statistics.median(secs_o)),
        ("Python baseline", p["n_cells"], p["tokens_total"], min(secs_p), statistics.median(secs_p))]
print(f"{'pipeline':<16} {'cells':>7} {'tokens':>10} {'best s':>8} {'median s':>9} {'cells/s':>10} {'tokens/s':>12}")
for name, c, k, s, m in rows:
    print(f"{name:<16} {c:>7} {k:>10} {s:>8.3f} {m:>9.3f} {c / s:>10.0f} {k / s:>12.0f}")
if rows[0][1] != rows[1][1] or rows[0][2] != rows[1][2]:
    print("WARNING: the two pipelines disagree on cells or tokens")
print(f"speed-up: {rows[1][3] / rows[0][3]:.1f}x best of {len(secs_o)}, {rows[1][4] / rows[0][4]:.1f}x median"
      f"  (ours {rows[0][2] / rows[0][3] / 1e6:.2f} M tokens/s)")
PYEOF
