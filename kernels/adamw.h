// AdamW over many float32 tensors in one pass (internal; no LibTorch, no CUDA headers in here), as
// ATen's fused AdamW computes it, and each updated weight also written as bf16 into its kept copy
// (the GEMMs' weight casts), so no separate cast pass reads the weights again.
//
// Per element: g = grad / grad_scale (when given); p -= lr * wd * p; m = beta1 m + (1 - beta1) g;
// v = beta2 v + (1 - beta2) g^2; p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),
// with t the tensor's step count (a float32 on the device, already advanced). found_inf != 0 skips
// everything. Gradients are read, never written.
#pragma once
#include <cstdint>
#include <vector>

namespace sctrain::kernels::cuda {

struct AdamWTensor {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  const float* step;  // device scalar
  void* bf16_copy;    // [numel] bf16, or nullptr
  int64_t numel;
  float weight_decay;
};

struct AdamWHyper {
  double lr, beta1, beta2, eps;
  const float* grad_scale;  // device scalar or nullptr
  const float* found_inf;   // device scalar or nullptr
};

// stream: a cudaStream_t. Throws std::runtime_error on a launch error.
void adamw_multi_tensor(const std::vector<AdamWTensor>& tensors, const AdamWHyper& h, void* stream);

}  // namespace sctrain::kernels::cuda
