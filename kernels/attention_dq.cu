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

// From the tiled layout (attention_cuda.h; it holds dQ / factor): a block per 64 x 64 chunk, read
// coalesced (each warp 512 contiguous bytes) into a row-major shared tile, then written as 16-byte row
// pieces, times factor; rows past the sequence's length written as zeros. (Without the shared tile, a thread per 16 contiguous floats: each
// warp read touched every sector twice, 47 us for the 160m model's layer at 8 x 2048.)
template <typename T, int D>
__global__ void __launch_bounds__(256) convert_dq_tiled_kernel(const float* __restrict__ acc, T* __restrict__ dq,
                                                               const int32_t* __restrict__ lengths, float factor,
                                                               int64_t s0, int64_t s1, int64_t s2, int N, int H,
                                                               int64_t chunks) {
  constexpr int CHUNKS = D / 64, LD = 72;  // row padding: both phases' shared accesses are conflict-free
  __shared__ __align__(16) float tile[64 * LD];
  const int tid = threadIdx.x;
  const int64_t blocks = dq_tiled_rows(N) / 64;
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    const int c = static_cast<int>(chunk % CHUNKS);
    const int64_t rb = (chunk / CHUNKS) % blocks, bh = chunk / CHUNKS / blocks;
    const int row0 = static_cast<int>(rb * 64);
    if (row0 >= N) continue;  // the whole block skips
    const float4* src = reinterpret_cast<const float4*>(acc + chunk * 4096);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int q = tid + 256 * i, lane = q % 32, wn = q / 32;  // float4 number (w * 8 + n) * 32 + lane
      const int r = (wn / 8) * 16 + lane / 4, col = (wn % 8) * 8 + 2 * (lane % 4);
      const float4 x = src[q];
      *reinterpret_cast<float2*>(&tile[r * LD + col]) = make_float2(x.x, x.y);
      *reinterpret_cast<float2*>(&tile[(r + 8) * LD + col]) = make_float2(x.z, x.w);
    }
    __syncthreads();
    const int64_t b = bh / H;
    const int h = static_cast<int>(bh % H);
    const int len = sm80::clamp_len(lengths, static_cast<int>(b), N);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int piece = tid + 256 * i, r = piece / 8, cg = piece % 8, row = row0 + r;
      if (row >= N) continue;
      // Pieces cg and cg + 4 read their halves in opposite order (else a 2-way bank conflict).
      const int sw = (cg >> 2) & 1;
      const float4 u = *reinterpret_cast<const float4*>(&tile[r * LD + cg * 8 + 4 * sw]);
      const float4 w = *reinterpret_cast<const float4*>(&tile[r * LD + cg * 8 + 4 * (1 - sw)]);
      const float4 lo = sw ? w : u, hi = sw ? u : w;
      uint4 out{0u, 0u, 0u, 0u};
      if (row < len) {
        out.x = sm80::Traits<T>::pack(factor * lo.x, factor * lo.y);
        out.y = sm80::Traits<T>::pack(factor * lo.z, factor * lo.w);
        out.z = sm80::Traits<T>::pack(factor * hi.x, factor * hi.y);
        out.w = sm80::Traits<T>::pack(factor * hi.z, factor * hi.w);
      }
      *reinterpret_cast<uint4*>(dq + b * s0 + row * s1 + h * s2 + c * 64 + cg * 8) = out;
    }
    __syncthreads();  // the tile is refilled for the next chunk
  }
}

}  // namespace

void convert_dq(const AttnParams& p, void* dq, const int64_t (&dq_stride)[3], cudaStream_t stream) {
  dispatch_launch(p, "dQ conversion", [&](auto t, auto d) {
    using T = typename decltype(t)::type;
    constexpr int D = decltype(d)::value;
    if (p.dq_tiled) {
      const int64_t chunks = dq_accum_numel(p) / 4096;
      const int64_t grid = std::min<int64_t>(chunks, static_cast<int64_t>(sm_count()) * 8);
      convert_dq_tiled_kernel<T, D><<<static_cast<unsigned>(grid), 256, 0, stream>>>(
          p.dq_accum, static_cast<T*>(dq), p.lengths, hopper_ds_factor(p), dq_stride[0], dq_stride[1], dq_stride[2], p.N,
          p.H, chunks);
      return;
    }
    const int64_t chunks = static_cast<int64_t>(p.B) * p.N * p.H * (D / 8);
    const int64_t grid = std::min<int64_t>((chunks + 255) / 256, static_cast<int64_t>(sm_count()) * 8);
    convert_dq_kernel<T, D><<<static_cast<unsigned>(grid), 256, 0, stream>>>(
        p.dq_accum, static_cast<T*>(dq), dq_stride[0], dq_stride[1], dq_stride[2], p.N, p.H, chunks);
  });
}

}  // namespace sctrain::kernels::cuda
