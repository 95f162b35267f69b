// dQ's last step: the fp32 accumulator ([B, N, H, D] rows, or tiled) to the input dtype, written with the
// gradient's own strides (e.g. slot 0 of a packed [B, N, 3, H, D] gradient). 8 elements per thread,
// vectorized on both sides (LibTorch's copy into a strided bf16 view runs one element at a time).
#include <algorithm>

#include "kernels/attention_cuda.h"
#include "kernels/launch.cuh"
#include "kernels/rows_common.cuh"
#include "kernels/sm80_common.cuh"

namespace sctrain::kernels::cuda {
namespace {

template <typename T, int D>
__global__ void __launch_bounds__(256) convert_dq_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t s0,
                                                         int64_t s1, int64_t s2, int N, int H, int64_t chunks) {
  constexpr int CH = D / 8;  // chunks per head row
  for (int64_t i = blockIdx.x * 256ll + threadIdx.x; i < chunks; i += static_cast<int64_t>(gridDim.x) * 256) {
    const int c = static_cast<int>(i % CH);
    const int64_t row = i / CH;  // (b, n, h)
    const int h = static_cast<int>(row % H);
    const int64_t bn = row / H;
    const int64_t b = bn / N, n = bn % N;
    const float4 x = reinterpret_cast<const float4*>(acc)[2 * i];
    const float4 y = reinterpret_cast<const float4*>(acc)[2 * i + 1];
    uint4 out;
    out.x = sm80::Traits<T>::pack(x.x, x.y);
    out.y = sm80::Traits<T>::pack(x.z, x.w);
    out.z = sm80::Traits<T>::pack(y.x, y.y);
    out.w = sm80::Traits<T>::pack(y.z, y.w);
    *reinterpret_cast<uint4*>(dq + b * s0 + n * s1 + h * s2 + c * 8) = out;
  }
}

// From the tiled layout (attention_cuda.h): one thread per 16 contiguous floats, rows r and r + 8 of
// one 8-column group; rows past the sequence's length written as zeros.
template <typename T, int D>
__global__ void __launch_bounds__(256) convert_dq_tiled_kernel(const float* __restrict__ acc, T* __restrict__ dq,
                                                               const int32_t* __restrict__ lengths, int64_t s0,
                                                               int64_t s1, int64_t s2, int N, int H, int64_t items) {
  constexpr int CHUNKS = D / 64;
  const int64_t blocks = dq_tiled_rows(N) / 64;
  for (int64_t u = blockIdx.x * 256ll + threadIdx.x; u < items; u += static_cast<int64_t>(gridDim.x) * 256) {
    const int j = static_cast<int>(u % 256);
    const int64_t chunk = u / 256;
    const int c = static_cast<int>(chunk % CHUNKS);
    const int64_t rb = (chunk / CHUNKS) % blocks, bh = chunk / CHUNKS / blocks;
    const int64_t b = bh / H;
    const int h = static_cast<int>(bh % H);
    const int r0 = static_cast<int>(rb * 64) + (j / 64) * 16 + j % 8, col = c * 64 + ((j / 8) % 8) * 8;
    if (r0 >= N) continue;
    const int len = sm80::clamp_len(lengths, static_cast<int>(b), N);
    const float4* f = reinterpret_cast<const float4*>(acc) + u * 4;
    float4 x[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) x[t] = f[t];
    T* out = dq + b * s0 + h * s2 + col;
    uint4 lo, hi;
    lo.x = sm80::Traits<T>::pack(x[0].x, x[0].y);
    lo.y = sm80::Traits<T>::pack(x[1].x, x[1].y);
    lo.z = sm80::Traits<T>::pack(x[2].x, x[2].y);
    lo.w = sm80::Traits<T>::pack(x[3].x, x[3].y);
    hi.x = sm80::Traits<T>::pack(x[0].z, x[0].w);
    hi.y = sm80::Traits<T>::pack(x[1].z, x[1].w);
    hi.z = sm80::Traits<T>::pack(x[2].z, x[2].w);
    hi.w = sm80::Traits<T>::pack(x[3].z, x[3].w);
    const uint4 zero{0u, 0u, 0u, 0u};
    *reinterpret_cast<uint4*>(out + r0 * s1) = r0 < len ? lo : zero;
    if (r0 + 8 < N) *reinterpret_cast<uint4*>(out + (r0 + 8) * s1) = r0 + 8 < len ? hi : zero;
  }
}

}  // namespace

void convert_dq(const AttnParams& p, void* dq, const int64_t (&dq_stride)[3], cudaStream_t stream) {
  dispatch_launch(p, "dQ conversion", [&](auto t, auto d) {
    using T = typename decltype(t)::type;
    constexpr int D = decltype(d)::value;
    if (p.dq_tiled) {
      const int64_t items = dq_accum_numel(p) / 16;
      const int64_t grid = std::min<int64_t>((items + 255) / 256, static_cast<int64_t>(sm_count()) * 8);
      convert_dq_tiled_kernel<T, D><<<static_cast<unsigned>(grid), 256, 0, stream>>>(
          p.dq_accum, static_cast<T*>(dq), p.lengths, dq_stride[0], dq_stride[1], dq_stride[2], p.N, p.H, items);
      return;
    }
    const int64_t chunks = static_cast<int64_t>(p.B) * p.N * p.H * (D / 8);
    const int64_t grid = std::min<int64_t>((chunks + 255) / 256, static_cast<int64_t>(sm_count()) * 8);
    convert_dq_kernel<T, D><<<static_cast<unsigned>(grid), 256, 0, stream>>>(
        p.dq_accum, static_cast<T*>(dq), dq_stride[0], dq_stride[1], dq_stride[2], p.N, p.H, chunks);
  });
}

}  // namespace sctrain::kernels::cuda
