// dQ's last step: the fp32 accumulator (contiguous [B, N, H, D]) to the input dtype, written with the
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

}  // namespace

void convert_dq(const AttnParams& p, void* dq, const int64_t (&dq_stride)[3], cudaStream_t stream) {
  dispatch_launch(p, "dQ conversion", [&](auto t, auto d) {
    using T = typename decltype(t)::type;
    constexpr int D = decltype(d)::value;
    const int64_t chunks = static_cast<int64_t>(p.B) * p.N * p.H * (D / 8);
    const int64_t grid = std::min<int64_t>((chunks + 255) / 256, static_cast<int64_t>(sm_count()) * 8);
    convert_dq_kernel<T, D><<<static_cast<unsigned>(grid), 256, 0, stream>>>(
        p.dq_accum, static_cast<T*>(dq), dq_stride[0], dq_stride[1], dq_stride[2], p.N, p.H, chunks);
  });
}

}  // namespace sctrain::kernels::cuda
