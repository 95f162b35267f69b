// Fused residual add + LayerNorm for pre-LN blocks (internal; no LibTorch, no CUDA headers in here).
//
// Forward, per row of d features:  x = r + h + hb (float32),  y = (x - mean) * rstd * gamma + beta,
// statistics in float32 (biased variance, as LayerNorm). r is the float32 residual stream; h
// (the branch output) is bf16, float32 or absent (then x = r and x is not written); hb, optional,
// is the bias of the layer that made h, added here instead of in its GEMM.
// Backward: dx = dx_next + LayerNorm backward(dy) in float32, written once (it is the gradient
// of both r and h), optionally also as bf16 (h's gradient when h is bf16); dgamma, dbeta and
// (with hb) hb's gradient, the column sums of dx, by a two-stage column reduction (per-CTA
// partials, then a sum over them): deterministic.
// All tensors contiguous, 16-byte aligned; d % 8 == 0 and d <= add_layer_norm_max_dim().
#pragma once
#include <cstdint>

namespace sctrain::kernels::cuda {

enum class NormType { None, F32, BF16 };

struct AddLayerNormForward {
  const float* r;       // [rows, d]
  const void* h;        // [rows, d] of h_type, or nullptr (h_type None)
  NormType h_type;
  const float* h_bias;  // [d] or nullptr (needs h)
  const float* gamma;   // [d]
  const float* beta;    // [d]
  float* x;             // [rows, d] = r + h; unused when h is absent
  void* y;              // [rows, d] of y_type (F32 or BF16)
  NormType y_type;
  float* mean;          // [rows]
  float* rstd;          // [rows]
  int64_t rows;
  int d;
  float eps;
};

struct AddLayerNormBackward {
  const void* dy;       // [rows, d] of dy_type (F32 or BF16)
  NormType dy_type;
  const float* x;       // [rows, d], the forward's normalized input
  const float* mean;
  const float* rstd;
  const float* gamma;
  const float* dx_next; // [rows, d] or nullptr: the gradient reaching x from the rest of the graph
  float* dx;            // [rows, d]
  void* dx_bf16;        // [rows, d] bf16 copy of dx, or nullptr
  float* partial;       // workspace [dh_bias ? 3 : 2, backward_grid, d]
  float* dgamma;        // [d], or nullptr
  float* dbeta;         // [d], or nullptr
  float* dh_bias;       // [d] = column sums of dx (hb's gradient), or nullptr
  int64_t rows;
  int d;
};

int add_layer_norm_max_dim();
// CTAs of the backward kernel for these sizes (the workspace's middle dimension).
int add_layer_norm_backward_grid(int64_t rows, int d, NormType dy_type, bool dh_bias);
// stream: a cudaStream_t. Throw std::runtime_error on a launch error.
void add_layer_norm_forward(const AddLayerNormForward& p, void* stream);
void add_layer_norm_backward(const AddLayerNormBackward& p, void* stream);

}  // namespace sctrain::kernels::cuda
