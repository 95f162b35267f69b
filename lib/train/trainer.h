// `sctrain pretrain` and `sctrain bench train`, as library calls (no LibTorch here).
#pragma once
#include <cstdint>
#include <string>

#include "train/config.h"

namespace sctrain::train {

struct PretrainOptions {
  std::string out_dir = "runs/default";
  bool resume = false;     // continue from the latest checkpoint in out_dir/checkpoints
  bool summary = true;     // print the end-of-run summary to stdout
  bool handle_signals = true;  // SIGINT/SIGTERM: finish the step, checkpoint, exit 130/143
};

// Exit codes: 0 done (max_steps or stop_at reached), 130/143 stopped by SIGINT/SIGTERM
// after saving a checkpoint, 3 stopped on a non-finite loss/gradient (nan_policy: stop;
// the last good checkpoint is kept). Configuration and data errors throw.
int pretrain(Config cfg, const PretrainOptions& opts);

struct BenchOptions {
  int64_t batch_size = 8;
  int64_t seq_len = 2048;
  int64_t warmup = 3;       // untimed steps
  int64_t steps = 10;       // timed steps
  int64_t vocab_size = 32000;
  std::string json_out;     // append one JSON line with the result ("" = stdout only)
};

// Trains on synthetic full-length sequences (random genes, 15% masked) and reports steady
// state tokens/s, model TFLOP/s and peak GPU memory. Returns 0, or 1 on out-of-memory.
int bench_train(Config cfg, const BenchOptions& opts);

}  // namespace sctrain::train
