// Cross-entropy of bf16 logits [rows, V] against targets (internal; no LibTorch, no CUDA headers in here),
// for the masked-token head: no float32 copy of the logits, one read of them each way.
//
// Forward, per row: lse = log sum_j exp(x_j) in float32 (one pass, running maximum) and
// loss = lse - x[target] (NaN for a target outside [0, V)). Backward: dx_j = (exp(x_j - lse) -
// [j == target]) * (*dloss) * inv_rows in bf16, the gradient of the mean of the rows' losses.
#pragma once
#include <cstdint>

namespace sctrain::kernels::cuda {

// stream: a cudaStream_t. Throw std::runtime_error on a launch error.
void cross_entropy_forward_bf16(const void* logits, const int64_t* targets, float* lse, float* loss, int64_t rows,
                                int V, void* stream);
void cross_entropy_backward_bf16(const void* logits, const int64_t* targets, const float* lse, const float* dloss,
                                 float inv_rows, void* dlogits, int64_t rows, int V, void* stream);

}  // namespace sctrain::kernels::cuda
