// GEMMs with fused epilogues by cuBLASLt, for the linear layers (internal; no LibTorch, no CUDA headers
// in here). Row-major operands, bf16 inputs, float32 accumulation.
//
// Each returns false when cuBLASLt has no algorithm for the case, so the caller takes its unfused
// path; other cuBLASLt errors throw std::runtime_error. GELU here is the tanh approximation (the one
// cuBLASLt's epilogues compute): 0.5 a (1 + tanh(sqrt(2 / pi) (a + 0.044715 a^3))).
#pragma once
#include <cstddef>
#include <cstdint>

namespace sctrain::kernels::cuda {

struct LtContext {
  void* handle;  // cublasLtHandle_t
  void* workspace;
  size_t workspace_bytes;
  void* stream;  // cudaStream_t
};

// a = x w^T + b and y = gelu_tanh(a): x [M, K], w [N, K], b [N] -> a, y [M, N]; all bf16.
bool gemm_bias_gelu_tanh(const LtContext& c, const void* x, const void* w, const void* b, void* a, void* y, int64_t M,
                         int64_t N, int64_t K);

// da = (dy w) * gelu_tanh'(a): dy [M, N], w [N, K], a [M, K] -> da [M, K]; all bf16.
bool gemm_dgelu_tanh(const LtContext& c, const void* dy, const void* w, const void* a, void* da, int64_t M, int64_t N,
                     int64_t K);

}  // namespace sctrain::kernels::cuda
