#!/usr/bin/env bash
# Data pipeline benchmark: h5ad -> rank tokens -> padded, masked batches of 32, one epoch,
# timed inside each program (process start and imports excluded), best of REPEATS runs.
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

best_of() {  # best_of CMD...: prints the fastest run's JSON line
  local best="" s out line=""
  for _ in $(seq "$REPEATS"); do
    out=$("$@" 2>/dev/null | tail -1)
    s=$(echo "$out" | "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("time_batches", d)["seconds_total" if "time_batches" in d else "seconds"])')
    if [[ -z "$best" ]] || "$PYTHON" -c "import sys; sys.exit(0 if $s < $best else 1)"; then best=$s; line=$out; fi
  done
  echo "$line"
}

echo "file: $FILE   max_len: $MAX_LEN   batch: $BATCH   best of $REPEATS   cores: $(nproc)"
OURS=$(best_of "$SCTRAIN" --log-level warn prepare --data "$FILE" --max-len "$MAX_LEN" --batch-size "$BATCH" \
       --time-batches --json)
PY=$(best_of "$PYTHON" scripts/tokenize_baseline.py "$FILE" --max-len "$MAX_LEN" --batch-size "$BATCH" --batches --json)
"$PYTHON" - "$OURS" "$PY" <<'PYEOF'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
t = o["time_batches"]
rows = [("sctrain (C++)", o["n_cells"], t["tokens"], t["seconds_total"]),
        ("Python baseline", p["n_cells"], p["tokens_total"], p["seconds"])]
print(f"{'pipeline':<16} {'cells':>7} {'tokens':>10} {'seconds':>8} {'cells/s':>10} {'tokens/s':>12}")
for name, c, k, s in rows:
    print(f"{name:<16} {c:>7} {k:>10} {s:>8.3f} {c / s:>10.0f} {k / s:>12.0f}")
if rows[0][1] != rows[1][1] or rows[0][2] != rows[1][2]:
    print("WARNING: the two pipelines disagree on cells or tokens")
print(f"speed-up: {rows[1][3] / rows[0][3]:.1f}x  (ours {rows[0][2] / rows[0][3] / 1e6:.2f} M tokens/s)")
PYEOF
