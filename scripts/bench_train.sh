#!/usr/bin/env bash
# Training throughput, ours vs the Hugging Face BERT peer, at the 160m size
# (12 x 1024, 16 heads, FFN 4096, vocab 32000, bf16 autocast, AdamW), on one GPU:
#   ours:  build/sctrain bench train, softmax and sigmoid attention, 8 x 2048 and 2 x 8192
#          (8K rows use configs/160m-8k-stress.yaml settings: no gradient clipping)
#   peer:  scripts/bench_bert.py (BertForMaskedLM, attn_implementation="sdpa")
# Prints a table with tokens/s, TFLOP/s, peak memory and ours/peer ratios; all JSON lines
# go to $OUT/results.jsonl.
#
#   scripts/bench_train.sh                    # after scripts/setup.sh, on a GPU machine
#   STEPS=20 SHAPES="8x2048" scripts/bench_train.sh
# Environment: SCTRAIN_BUILD_DIR (build), PYTHON (.deps/venv/bin/python3), OUT
# (runs/bench_train), STEPS (10), WARMUP (3), SHAPES ("8x2048 2x8192"), VOCAB (32000),
# CONFIG (configs/160m.yaml), the A/B switches of `sctrain bench train` (SCTRAIN_BENCH_SYNC=1: wait
# for the GPU after every step; SCTRAIN_BF16_LN=0|nosplit: float32 LayerNorms | bf16 ones without
# the fused residual gradient) and BERT_ARGS (a CPU smoke test at a tiny size:
#   CONFIG=configs/quickstart.yaml BERT_ARGS="--layers 2 --hidden 128 --heads 4 --ffn 512" \
#   SHAPES=2x128 STEPS=2 WARMUP=1 VOCAB=2000 scripts/bench_train.sh).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build="${SCTRAIN_BUILD_DIR:-$root/build}"
py="${PYTHON:-$root/.deps/venv/bin/python3}"
[ -x "$py" ] || py=python3
out="${OUT:-$root/runs/bench_train}"
steps="${STEPS:-10}"
warmup="${WARMUP:-3}"
shapes="${SHAPES:-8x2048 2x8192}"
vocab="${VOCAB:-32000}"
config="${CONFIG:-configs/160m.yaml}"
bert_args="${BERT_ARGS:-}"   # e.g. "--layers 2 --hidden 128 --heads 4 --ffn 512" to match a small CONFIG
mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
# The peer's feed-forward GELU as the config's (model.activation gelu_tanh: HF's gelu_pytorch_tanh).
bert_act=gelu
grep -Eq '^ *activation: *gelu_tanh' "$config" && bert_act=gelu_pytorch_tanh

if [ ! -x "$build/sctrain" ]; then
  echo "bench_train.sh: $build/sctrain is missing: run scripts/setup.sh first" >&2
  exit 1
fi
have_hf=1
"$py" -c "import transformers" 2>/dev/null || {
  have_hf=0
  echo "bench_train.sh: transformers is not installed for $py (pip install transformers): BERT rows skipped" >&2
}

for shape in $shapes; do
  b=${shape%x*}
  l=${shape#*x}
  # 8K tokens: the stress settings (no gradient clipping); shorter: configs/160m.yaml.
  if [ "$l" -ge 8192 ]; then clip=0; else clip=1.0; fi
  for attn in softmax sigmoid; do
    echo "== sctrain $config $attn ${b}x${l}" >&2
    "$build/sctrain" bench train --config "$config" --batch-size "$b" --seq-len "$l" \
      --steps "$steps" --warmup "$warmup" --vocab "$vocab" \
      --set model.attention="$attn" --set train.max_grad_norm="$clip" --json "$results" ||
      echo "   (failed: exit $?)" >&2
  done
  if [ "$have_hf" = 1 ]; then
    echo "== hf-bert sdpa ${b}x${l}" >&2
    "$py" scripts/bench_bert.py --batch-size "$b" --seq-len "$l" --steps "$steps" --warmup "$warmup" \
      --vocab "$vocab" --clip "$clip" --act "$bert_act" --json "$results" $bert_args || echo "   (failed: exit $?)" >&2
  fi
done

"$py" - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peer = {(r["batch_size"], r["seq_len"]): r for r in rows if r["impl"] == "hf-bert" and r["status"] == "ok"}
print()
print(f"{'impl':<9} {'attention':<14} {'shape':>8} {'params':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'peak GiB':>9} {'ms/step':>8}  vs BERT (tok/s, mem)")
for r in rows:
    shape = f"{r['batch_size']}x{r['seq_len']}"
    if r["status"] != "ok":
        print(f"{r['impl']:<9} {r['attention']:<14} {shape:>8}  {r['status']}")
        continue
    mem = r.get("mem_peak_gib")
    line = (f"{r['impl']:<9} {r['attention']:<14} {shape:>8} {r['params']/1e6:7.1f}M {r['tokens_per_s']:10.0f} "
            f"{r['tflops']:8.1f} {(mem if mem is not None else float('nan')):9.2f} {r['step_ms']:8.1f}")
    p = peer.get((r["batch_size"], r["seq_len"]))
    if r["impl"] != "hf-bert" and p:
        ratio_mem = (mem / p["mem_peak_gib"]) if mem and p.get("mem_peak_gib") else float("nan")
        line += f"  {r['tokens_per_s']/p['tokens_per_s']:.2f}x, {ratio_mem:.2f}x"
    print(line)
PY
echo "results: $results" >&2
