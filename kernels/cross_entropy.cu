// Cross-entropy of bf16 logits (see cross_entropy.h): a block per row, 8 logits (16 bytes) per thread and
// step when the row allows it (V % 8 == 0, 16-byte aligned rows), else one at a time. Memory-bound.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cross_entropy.h"
#include "kernels/rows_common.cuh"

namespace sctrain::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Running (maximum, sum of exp(x - maximum)).
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

template <bool VEC>
__global__ void __launch_bounds__(kThreads) ce_forward(const __nv_bfloat16* __restrict__ logits,
                                                       const int64_t* __restrict__ targets, float* __restrict__ lse,
                                                       float* __restrict__ loss, int V) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = logits + row * V;
  MaxSum acc{-INFINITY, 0.f};
  if constexpr (VEC) {
#pragma unroll 4
    for (int j = threadIdx.x * 8; j < V; j += kThreads * 8) {
      float v[8];
      load8(x + j, v);
      float mv = v[0];
#pragma unroll
      for (int e = 1; e < 8; ++e) mv = fmaxf(mv, v[e]);
      if (mv > acc.m) {
        acc.s *= __expf(acc.m - mv);
        acc.m = mv;
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) acc.s += __expf(v[e] - acc.m);
    }
  } else {
    for (int j = threadIdx.x; j < V; j += kThreads) acc = combine(acc, {__bfloat162float(x[j]), 1.f});
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    acc = combine(acc, {__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o)});
  __shared__ MaxSum warps[kThreads / 32];
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x != 0) return;
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) acc = combine(acc, warps[w]);
  const float l = acc.m + logf(acc.s);
  const int64_t t = targets[row];
  lse[row] = l;
  loss[row] = t >= 0 && t < V ? l - __bfloat162float(x[t]) : NAN;
}

template <bool VEC>
__global__ void __launch_bounds__(kThreads) ce_backward(const __nv_bfloat16* __restrict__ logits,
                                                        const int64_t* __restrict__ targets,
                                                        const float* __restrict__ lse, const float* __restrict__ dloss,
                                                        float inv_rows, __nv_bfloat16* __restrict__ dlogits, int V) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = logits + row * V;
  __nv_bfloat16* dx = dlogits + row * V;
  const float l = lse[row], scale = *dloss * inv_rows;
  const int64_t t = targets[row];
  if constexpr (VEC) {
    for (int j = threadIdx.x * 8; j < V; j += kThreads * 8) {
      float v[8];
      load8(x + j, v);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = (__expf(v[e] - l) - (j + e == t ? 1.f : 0.f)) * scale;
      store8(dx + j, v);
    }
  } else {
    for (int j = threadIdx.x; j < V; j += kThreads)
      dx[j] = __float2bfloat16_rn((__expf(__bfloat162float(x[j]) - l) - (j == t ? 1.f : 0.f)) * scale);
  }
}

bool vectorizable(const void* a, const void* b, int V) {
  return V % 8 == 0 && ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) & 15) == 0;
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("cross-entropy ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace

void cross_entropy_forward_bf16(const void* logits, const int64_t* targets, float* lse, float* loss, int64_t rows,
                                int V, void* stream) {
  if (rows == 0) return;
  const auto x = static_cast<const __nv_bfloat16*>(logits);
  const auto s = static_cast<cudaStream_t>(stream);
  if (vectorizable(logits, logits, V)) ce_forward<true><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, targets, lse, loss, V);
  else ce_forward<false><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, targets, lse, loss, V);
  check_launch("forward");
}

void cross_entropy_backward_bf16(const void* logits, const int64_t* targets, const float* lse, const float* dloss,
                                 float inv_rows, void* dlogits, int64_t rows, int V, void* stream) {
  if (rows == 0) return;
  const auto x = static_cast<const __nv_bfloat16*>(logits);
  const auto dx = static_cast<__nv_bfloat16*>(dlogits);
  const auto s = static_cast<cudaStream_t>(stream);
  if (vectorizable(logits, dlogits, V))
    ce_backward<true><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, targets, lse, dloss, inv_rows, dx, V);
  else
    ce_backward<false><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, targets, lse, dloss, inv_rows, dx, V);
  check_launch("backward");
}

}  // namespace sctrain::kernels::cuda
