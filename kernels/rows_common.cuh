// Helpers of the row-wise kernels (add_layer_norm.cu, gelu.cu, attention_dq.cu): vectors of 8 elements
// (16 or 32 bytes) to and from float registers, the second stage of a two-stage column sum, and the
// current device's SM count for grid sizes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace sctrain::kernels::cuda {
namespace {

inline int sm_count() {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return std::max(sms, 1);
}

__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(b[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float (&v)[8]) {
  uint4 u;
  __nv_bfloat162* b = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) b[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

// Second stage of a column sum: out[a][c] = sum over p of partial[a][p][c] for a = blockIdx.y (a null
// output is skipped). blockDim (32, 8), grid (ceil(d / 32), number of outputs, at most 3).
struct ColumnSumOutputs {
  float* out[3];
};
__global__ void column_sums(const float* __restrict__ partial, int P, int d, const ColumnSumOutputs outs) {
  const int c = blockIdx.x * 32 + threadIdx.x, a = blockIdx.y;
  float* out = outs.out[a];
  if (out == nullptr) return;  // uniform over the CTA
  const float* p = partial + static_cast<int64_t>(a) * P * d;
  float s = 0.f;
  if (c < d)
    for (int i = threadIdx.y; i < P; i += 8) s += p[static_cast<int64_t>(i) * d + c];
  __shared__ float sm[8][33];
  sm[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < d) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) t += sm[i][threadIdx.x];
    out[c] = t;
  }
}

}  // namespace
}  // namespace sctrain::kernels::cuda
