// GELU (exact, erf) for the feed-forward's first layer (internal; no LibTorch, no CUDA headers in here).
//
// Forward: y = a * Phi(a) = a * 0.5 * (1 + erf(a / sqrt(2))), bf16 in and out, float32 arithmetic
// (erf to 1.5e-7, as float32 erff).
// Backward: da = dy * GELU'(a) in bf16, and the column sums of da (the first layer's bias gradient)
// by a two-stage reduction (per-CTA partials, then a sum over them): deterministic, and no separate
// pass over da. All tensors contiguous, 16-byte aligned, cols % 8 == 0.
#pragma once
#include <cstdint>

namespace sctrain::kernels::cuda {

// stream: a cudaStream_t. Throw std::runtime_error on a launch error.
void gelu_forward_bf16(const void* a, void* y, int64_t n, void* stream);

// CTAs of the backward for these sizes (partial holds gelu_backward_partials(rows, cols) x cols floats).
int gelu_backward_partials(int64_t rows, int cols);
void gelu_backward_bf16(const void* dy, const void* a, void* da, float* partial, float* dbias, int64_t rows, int cols,
                        void* stream);

}  // namespace sctrain::kernels::cuda
