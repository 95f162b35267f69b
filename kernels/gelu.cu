// GELU forward, and its backward fused with the bias gradient of the layer before it (see gelu.h).
// Each thread holds 8 consecutive elements (16 bytes of bf16); memory-bound.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/gelu.h"
#include "kernels/rows_common.cuh"

namespace sctrain::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Phi(x) (the standard normal CDF) and exp(-x^2 / 2) by Abramowitz & Stegun 7.1.26 (|erf error| <=
// 1.5e-7, as accurate as float32 erff): one reciprocal and one exponential, where erff took ~40
// instructions per element and made both kernels compute-bound.
__device__ __forceinline__ void normal_cdf(float x, float& cdf, float& gauss) {
  const float z = fabsf(x) * 0.70710678118654752f;
  const float t = __fdividef(1.f, fmaf(0.3275911f, z, 1.f));
  const float poly =
      t * fmaf(t, fmaf(t, fmaf(t, fmaf(t, 1.061405429f, -1.453152027f), 1.421413741f), -0.284496736f), 0.254829592f);
  gauss = __expf(-z * z);
  const float tail = 0.5f * poly * gauss;  // (1 - erf(z)) / 2 = Phi(-|x|)
  cdf = x < 0.f ? tail : 1.f - tail;
}
__device__ __forceinline__ float gelu(float x) {
  float cdf, gauss;
  normal_cdf(x, cdf, gauss);
  return x * cdf;
}
// d/dx GELU = Phi(x) + x phi(x).
__device__ __forceinline__ float gelu_grad(float x) {
  float cdf, gauss;
  normal_cdf(x, cdf, gauss);
  return fmaf(x * 0.39894228040143268f, gauss, cdf);
}

__global__ void __launch_bounds__(kThreads) gelu_forward(const __nv_bfloat16* __restrict__ a,
                                                         __nv_bfloat16* __restrict__ y, int64_t n8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    float v[8];
    load8(a + 8 * i, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = gelu(v[e]);
    store8(y + 8 * i, v);
  }
}

// grid (P, ceil(cols / (8 * kThreads))): CTA (p, y) takes rows p, p + P, ... and the 8-column chunk
// (y * kThreads + thread) of each, and writes its column sums of da to partial[p].
__global__ void __launch_bounds__(kThreads) gelu_backward(const __nv_bfloat16* __restrict__ dy,
                                                          const __nv_bfloat16* __restrict__ a,
                                                          __nv_bfloat16* __restrict__ da, float* __restrict__ partial,
                                                          int64_t rows, int cols) {
  const int c = (blockIdx.y * kThreads + threadIdx.x) * 8;
  if (c >= cols) return;
  float sum[8] = {};
#pragma unroll 2
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t off = r * cols + c;
    float g[8], x[8];
    load8(dy + off, g);
    load8(a + off, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      g[e] *= gelu_grad(x[e]);
      sum[e] += g[e];
    }
    store8(da + off, g);
  }
  float* out = partial + static_cast<int64_t>(blockIdx.x) * cols + c;
  *reinterpret_cast<float4*>(out) = make_float4(sum[0], sum[1], sum[2], sum[3]);
  *reinterpret_cast<float4*>(out + 4) = make_float4(sum[4], sum[5], sum[6], sum[7]);
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("gelu ") + what + ": " + cudaGetErrorString(err));
}

}  // namespace

void gelu_forward_bf16(const void* a, void* y, int64_t n, void* stream) {
  if (n == 0) return;
  if (n % 8 != 0) throw std::invalid_argument("gelu: element count must be a multiple of 8");
  const int64_t n8 = n / 8;
  const int64_t grid = std::min<int64_t>((n8 + kThreads - 1) / kThreads, int64_t{sm_count()} * 8);
  gelu_forward<<<static_cast<unsigned>(grid), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const __nv_bfloat16*>(a), static_cast<__nv_bfloat16*>(y), n8);
  check_launch("forward");
}

int gelu_backward_partials(int64_t rows, int cols) {
  // About 4 CTAs of 256 threads per SM in all.
  const int chunks = (cols / 8 + kThreads - 1) / kThreads;
  const int64_t p = std::max<int64_t>(1, int64_t{sm_count()} * 4 / chunks);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, p)));
}

void gelu_backward_bf16(const void* dy, const void* a, void* da, float* partial, float* dbias, int64_t rows, int cols,
                        void* stream) {
  if (cols % 8 != 0 || cols <= 0) throw std::invalid_argument("gelu backward: columns must be a positive multiple of 8");
  const auto s = static_cast<cudaStream_t>(stream);
  const int P = gelu_backward_partials(rows, cols);
  if (rows > 0) {
    const dim3 grid(P, (cols / 8 + kThreads - 1) / kThreads);
    gelu_backward<<<grid, kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(dy), static_cast<const __nv_bfloat16*>(a),
                                            static_cast<__nv_bfloat16*>(da), partial, rows, cols);
    check_launch("backward");
  } else {
    cudaMemsetAsync(partial, 0, sizeof(float) * cols, s);
  }
  column_sums<<<dim3((cols + 31) / 32, 1), dim3(32, 8), 0, s>>>(partial, P, cols,
                                                             ColumnSumOutputs{{dbias, nullptr, nullptr}});
  check_launch("column sums");
}

}  // namespace sctrain::kernels::cuda
