// Benchmark of the sigmoid-attention kernel against LibTorch's softmax SDPA (cuDNN, flash).
#pragma once
#include <string>
#include <vector>

namespace sctrain::kernels {

struct AttentionBenchOptions {
  std::vector<int> head_dims{64, 128};
  std::vector<int> seqlens{1024, 2048, 4096, 8192, 16384};
  int tokens = 16384;   // B * N
  int width = 2048;     // H * D
  int reps = 10;        // timed repetitions (median)
  bool padded = true;   // also lengths uniform in [N/2, N]
  bool fp16 = false;    // else bf16
  std::string json;     // write results here when set
};

// Prints a table (and ratios) to stdout; returns 0, or 1 without a CUDA device.
int run_attention_bench(const AttentionBenchOptions& opts);

}  // namespace sctrain::kernels
