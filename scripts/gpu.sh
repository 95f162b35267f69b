#!/usr/bin/env bash
# On the GPU machine: configure (build-gpu), build, test and benchmark.
#   scripts/gpu.sh [STEP...]   default: kernels
# Steps: all = project train kernels-sanitize kernels-bench
#        project = build everything, run the whole test suite (GPU tests included)
#        gpu-tests = build sctrain and the three test binaries that hold GPU tests (kernels, model, train)
#                    and run them whole: the GPU check of a change in less device time than project
#        train = pretrain on the GPU (softmax, sigmoid), then scripts/bench_train.sh (ours vs HF BERT)
#        kernels = kernels-build kernels-test kernels-sanitize kernels-bench
#        kernels-build | kernels-test | kernels-sanitize | kernels-bench | kernels-bench-quick | kernels-profile
#        train-ab = the 160m sigmoid step with each switch of SCTRAIN_AB (default: SCTRAIN_ADAMW_CASTS=0
#                   SCTRAIN_FUSED_CE=0) against none, interleaved, 2 rounds, at 8 x 2048 (clip 1.0)
#                   and 2 x 8192 (no clipping)
#        train-profile = GPU time per kernel of the 160m sigmoid step at 8 x 2048 (SCTRAIN_PROFILE=3)
#        kernels-ab = sctrain bench attention with each switch of SCTRAIN_AB (required, e.g.
#                     SCTRAIN_ATTENTION_FWD_ROWS=192) against none, interleaved; KAB_ROUNDS rounds (3),
#                     KAB_ARGS the bench's arguments (d 64 and 128, N = 1-16K, dense, 10 reps); one line per
#                     (d, N): ours fwd / bwd TFLOP/s, cuDNN's, and padded where run
# Logs and JSON go to $OUT (set by the device tool), else build-gpu/out. Add steps in the case below.
# SCTRAIN_KERNELS_ONLY=1: configure kernels/standalone only (the kernels, their tests and attention_bench).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SCTRAIN_GPU_BUILD:-$root/build-gpu}
out=${OUT:-$build/out}
mkdir -p "$out"
py=${PYTHON:-python3}
torch_dir=$($py -c 'import torch;print(torch.utils.cmake_prefix_path)')/Torch
status=0
standalone=0

configure() {
  [[ -f $build/build.ninja ]] && return 0
  echo "== configure $build"
  if [[ -n ${SCTRAIN_KERNELS_ONLY:-} ]] || ! cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSCTRAIN_CUDA=ON \
      -DTorch_DIR="$torch_dir" >"$out/configure.log" 2>&1; then
    echo "kernels only (SCTRAIN_KERNELS_ONLY set, or the project did not configure: see configure.log)"
    rm -rf "$build"
    standalone=1
    cmake -S "$root/kernels/standalone" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DTorch_DIR="$torch_dir" >>"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
  fi
}
[[ -f $build/CMakeCache.txt ]] && grep -q sctrain_kernels_only "$build/CMakeCache.txt" && standalone=1

bin() {  # path of a built binary, project or stand-alone layout
  for p in "$build/$1" "$build/kernels/$(basename "$1")" "$build/tests/kernels/$(basename "$1")"; do
    [[ -x $p ]] && { echo "$p"; return; }
  done
}

kernels_build() {
  configure
  echo "== build kernels"
  local targets="sctrain_kernels test_attention attention_bench"
  ninja -C "$build" -j16 $targets 2>&1 | tee "$out/build.log" | grep -E "error|warning|spill" | head -40
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { tail -40 "$out/build.log"; exit 1; }
  if [[ $standalone -eq 0 ]]; then ninja -C "$build" -j16 sctrain >>"$out/build.log" 2>&1 || echo "(sctrain did not build; using attention_bench)"; fi
}
kernels_test() {
  echo "== test kernels"
  # A hung kernel must not take the whole device call: the tests end within 4 minutes or fail.
  timeout 240 "$(bin tests/kernels/test_attention)" --gtest_brief=1 2>&1 | tee "$out/test.log" | tail -30
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
}
kernels_sanitize() {
  echo "== compute-sanitizer (small case)"
  local t; t=$(bin tests/kernels/test_attention)
  for path in default sm80; do  # the device's own path, then the portable one
    for tool in memcheck racecheck synccheck; do
      SCTRAIN_ATTENTION_PATH=$path timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 "$t" \
        --gtest_filter='SigmoidAttentionGpu.Small*' >"$out/sanitize.tmp" 2>&1 \
        && echo "$path $tool: clean" || { echo "$path $tool: FAILED"; tail -20 "$out/sanitize.tmp"; status=1; }
      { echo "== $path $tool"; cat "$out/sanitize.tmp"; } >>"$out/sanitize.log"; rm -f "$out/sanitize.tmp"
    done
  done
}
kernels_bench() {
  echo "== bench attention $*"
  local s; s=$(bin sctrain)
  if [[ -n $s ]]; then "$s" bench attention --json "$out/bench.json" "$@" 2>&1 | tee "$out/bench.log"
  else "$(bin kernels/attention_bench)" --json "$out/bench.json" "$@" 2>&1 | tee "$out/bench.log"; fi
}

configure_project() {
  if [[ $standalone -eq 1 && -z ${SCTRAIN_KERNELS_ONLY:-} ]]; then  # a kernels-only build from an earlier call
    echo "== $build holds a kernels-only build: configuring the whole project afresh"
    rm -rf "$build"; mkdir -p "$out"; standalone=0
  fi
  configure
}
project_build_test() {
  configure_project
  echo "== build all"
  ninja -C "$build" -j16 >"$out/build-all.log" 2>&1 || { grep -E "error|FAILED" -A3 "$out/build-all.log" | head -40; exit 1; }
  echo "== ctest"
  (cd "$build" && ctest -j8 --timeout 300 --output-on-failure >"$out/ctest.log" 2>&1) || status=1
  tail -25 "$out/ctest.log"
}
gpu_tests() {
  configure_project
  echo "== build sctrain and the tests with GPU cases"
  ninja -C "$build" -j16 sctrain test_attention test_model test_train >"$out/build-gpu-tests.log" 2>&1 ||
    { grep -E "error|FAILED" -A3 "$out/build-gpu-tests.log" | head -40; exit 1; }
  for t in kernels/test_attention model/test_model train/test_train; do
    echo "== $t"
    # A hung kernel must not take the whole device call.
    timeout 300 "$build/tests/$t" --gtest_brief=1 >"$out/$(basename $t).log" 2>&1 || status=1
    grep -E "^\[ *(PASSED|FAILED|SKIPPED) *\]|Failure|^\[ 8K \]|largest relative|losses" "$out/$(basename $t).log" | head -20
  done
}
train_run() {
  echo "== pretrain on the GPU (quickstart config, 60 steps, softmax and sigmoid)"
  for attn in softmax sigmoid; do
    rm -rf "$build/runs/gpu-$attn"
    (cd "$root" && "$build/sctrain" pretrain --config configs/quickstart.yaml --out "$build/runs/gpu-$attn" \
      --max-steps 60 --set model.attention=$attn --set train.device=cuda) >"$out/pretrain-$attn.log" 2>&1 || status=1
    tail -8 "$out/pretrain-$attn.log"
  done
  echo "== bench_train (ours vs HF BertForMaskedLM)"
  (cd "$root" && PYTHON=$py SCTRAIN_BUILD_DIR="$build" OUT="$out/bench_train" bash scripts/bench_train.sh) 2>&1 | tee "$out/bench_train.log" | tail -20
}

bench_step_ms() {  # BATCH SEQ CLIP [ENV=VALUE...]: ms per step of the 160m sigmoid model
  local bs=$1 n=$2 clip=$3; shift 3
  (cd "$root" && env "$@" timeout 200 "$build/sctrain" bench train --config configs/160m.yaml --batch-size "$bs" \
    --seq-len "$n" --set model.attention=sigmoid --set train.max_grad_norm="$clip" --steps 10 --warmup 3 2>&1) |
    grep -o '"step_ms":[0-9.]*' | cut -d: -f2
}
train_ab() {
  echo "== A/B of the 160m sigmoid step (ms per step; each switch against none, interleaved)"
  local switches=${SCTRAIN_AB:-SCTRAIN_ADAMW_CASTS=0 SCTRAIN_FUSED_CE=0}
  for round in 1 2; do
    for shape in "8 2048 1.0" "2 8192 0"; do
      read -r bs n clip <<<"$shape"
      for sw in none $switches; do
        local env=(); [[ $sw != none ]] && env=("$sw")
        echo "round $round ${bs}x$n $sw: $(bench_step_ms "$bs" "$n" "$clip" "${env[@]}") ms"
      done
    done
  done | tee "$out/train_ab.log"
}
train_profile() {
  echo "== GPU time per kernel, 160m sigmoid, 8 x 2048"
  (cd "$root" && SCTRAIN_PROFILE=3 timeout 200 "$build/sctrain" bench train --config configs/160m.yaml --batch-size 8 \
    --seq-len 2048 --set model.attention=sigmoid --set train.max_grad_norm=1.0 --steps 5 --warmup 2) \
    >"$out/train_profile.log" 2>&1 || status=1
  grep -E "profile:" -A40 "$out/train_profile.log" | cut -c1-150 | head -45
}

kernels_ab() {
  local switches=${SCTRAIN_AB:?kernels-ab: set SCTRAIN_AB to the switches, e.g. SCTRAIN_AB=SCTRAIN_ATTENTION_FWD_ROWS=192}
  local args=${KAB_ARGS:---head-dims 64 128 --seqlens 1024 2048 4096 8192 16384 --reps 10 --no-padded}
  echo "== A/B of the attention kernels (TFLOP/s fwd / bwd; each switch against none, interleaved)"
  for round in $(seq "${KAB_ROUNDS:-3}"); do
    for sw in none $switches; do
      local env=(); [[ $sw != none ]] && env=("$sw")
      # shellcheck disable=SC2086
      env "${env[@]}" timeout 150 "$(bin sctrain)" bench attention $args 2>&1 |
        awk -v tag="round $round $sw" '  # the table: impl in 28 columns, then d N B H fwd_ms bwd_ms fwd_tf bwd_tf
          /^sigmoid \(ours\) |^softmax cuDNN / && NF >= 9 {
            impl = substr($0, 1, 28); sub(/ +$/, "", impl); split(substr($0, 29), f, " ")
            key = f[1] " " f[2]; cell = sprintf("%.0f/%.0f", f[7], f[8])
            if (impl == "sigmoid (ours)") { ours[key] = cell; order[++n] = key }
            else if (impl == "sigmoid (ours) padded") padded[key] = cell
            else if (impl == "softmax cuDNN") cudnn[key] = cell
          }
          END {
            if (n == 0) print tag ": no results"
            for (i = 1; i <= n; ++i) {
              k = order[i]; split(k, dn, " ")
              printf "%s d%s N%s: ours %s cudnn %s%s\n", tag, dn[1], dn[2], ours[k], cudnn[k], (k in padded) ? " padded " padded[k] : ""
            }
          }'
    done
  done | tee "$out/kernels_ab.log"
}

[[ $# -eq 0 ]] && set -- kernels
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader || true
for step in "$@"; do
  case $step in
    all) project_build_test; train_run; kernels_sanitize; kernels_bench ;;
    project) project_build_test ;;
    gpu-tests) gpu_tests ;;
    train) train_run ;;
    train-ab) train_ab ;;
    train-profile) train_profile ;;
    kernels-ab) kernels_ab ;;
    kernels) kernels_build; kernels_test; kernels_sanitize; kernels_bench ;;
    kernels-build) kernels_build ;;
    kernels-test) kernels_test ;;
    kernels-sanitize) kernels_sanitize ;;
    kernels-bench) kernels_bench ;;
    kernels-bench-quick) kernels_bench --seqlens 2048 8192 ;;
    kernels-profile)  # Nsight Compute: first forward and first backward launch of ours (d128, N=4096)
      : >"$out/profile.txt"
      for k in fwd_kernel bwd_kernel; do
        ncu --kernel-name regex:$k --launch-count 1 --section SpeedOfLight --section WarpStateStats \
          --section Occupancy --section ComputeWorkloadAnalysis "$(bin kernels/attention_bench)" \
          --seqlens 4096 --head-dims 128 --reps 1 --no-padded >>"$out/profile.txt" 2>&1
      done
      grep -E "_kernel|Throughput|Stall|Warp Cycles|Issued Ipc|Achieved Occ|Registers" "$out/profile.txt" | head -60 ;;
    *) echo "unknown step: $step"; exit 2 ;;
  esac
done
exit $status
