// Forward sigmoid attention, portable path (sm_80+): mma.sync m16n8k16, cp.async double buffering.
// One block = BR = 16*NW query rows of one (batch, head); each warp owns 16 rows and loops over
// key blocks of 64 up to the sequence's length. P stays in registers (accumulator -> A operand).
#include "kernels/attention_cuda.h"
#include "kernels/launch.cuh"
#include "kernels/sm80_common.cuh"

namespace sctrain::kernels::cuda {
namespace sm80 {
namespace {

constexpr int BC = 64;

template <typename T, int D, int NW>
__global__ void __launch_bounds__(NW * 32) fwd_kernel(const AttnParams p) {
  constexpr int BR = 16 * NW, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + BR * D;       // 2 stages
  T* sV = sK + 2 * BC * D;   // 2 stages

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = blockIdx.x * BR;
  const int len = clamp_len(p.lengths, b, p.N);
  const int64_t o_row = static_cast<int64_t>(p.H) * D;
  T* o = static_cast<T*>(p.o) + (static_cast<int64_t>(b) * p.N) * o_row + static_cast<int64_t>(h) * D;

  const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;  // this thread's two rows
  if (q0 >= len) {  // all padding: zeros only
    const uint32_t z = 0;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int c = n * 8 + 2 * t;
      if (r0 < p.N) *reinterpret_cast<uint32_t*>(o + r0 * o_row + c) = z;
      if (r1 < p.N) *reinterpret_cast<uint32_t*>(o + r1 * o_row + c) = z;
    }
    return;
  }

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];
  const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(len > 0 ? len : 1));
  const float hs = 0.5f * p.scale, hb = 0.5f * bias;  // sigmoid(x) = 0.5 + 0.5 tanh(x/2)
  const int nkb = (len + BC - 1) / BC;

  load_tile<BR, D, NT>(sQ, q + q0 * p.q_stride[1], p.q_stride[1], len - q0, tid);
  load_tile<BC, D, NT>(sK, k, p.k_stride[1], len, tid);
  load_tile<BC, D, NT>(sV, v, p.v_stride[1], len, tid);
  cp_async_commit();

  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  uint32_t qf[D / 16][4];

  for (int j = 0; j < nkb; ++j) {
    const int st = j & 1;
    if (j + 1 < nkb) {
      const int kn = (j + 1) * BC;
      load_tile<BC, D, NT>(sK + (st ^ 1) * BC * D, k + kn * p.k_stride[1], p.k_stride[1], len - kn, tid);
      load_tile<BC, D, NT>(sV + (st ^ 1) * BC * D, v + kn * p.v_stride[1], p.v_stride[1], len - kn, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int row = warp * 16 + (lane % 8) + ((lane / 8) & 1) * 8, col = kk * 16 + (lane / 16) * 8;
        ldsm_x4(qf[kk], smem_addr(sQ + swz<D>(row, col)));
      }
    }
    const T* cK = sK + st * BC * D;
    const T* cV = sV + st * BC * D;

    float s[BC / 8][4];
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        uint32_t bf[4];
        const int key = np * 16 + (lane % 8) + (lane / 16) * 8, col = kk * 16 + ((lane / 8) & 1) * 8;
        ldsm_x4(bf, smem_addr(cK + swz<D>(key, col)));
        mma<T>(s[2 * np], qf[kk], bf[0], bf[1]);
        mma<T>(s[2 * np + 1], qf[kk], bf[2], bf[3]);
      }
    }
    // P = sigmoid(S * scale + bias), zero for keys past the length.
    const int kbase = j * BC;
    const bool partial = kbase + BC > len;
    uint32_t pf[BC / 16][4];
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
      float pv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pv[e] = sigmoid_half_arg(fmaf(s[n][e], hs, hb));
        if (partial && kbase + n * 8 + 2 * t + (e & 1) >= len) pv[e] = 0.f;
      }
      pf[n / 2][(n & 1) * 2 + 0] = Traits<T>::pack(pv[0], pv[1]);
      pf[n / 2][(n & 1) * 2 + 1] = Traits<T>::pack(pv[2], pv[3]);
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bf[4];
        const int key = kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8, col = dp * 16 + (lane / 16) * 8;
        ldsm_x4_t(bf, smem_addr(cV + swz<D>(key, col)));
        mma<T>(acc[2 * dp], pf[kk], bf[0], bf[1]);
        mma<T>(acc[2 * dp + 1], pf[kk], bf[2], bf[3]);
      }
    }
    __syncthreads();
  }

  // Write O; padded rows get zeros.
  const bool v0 = r0 < len, v1 = r1 < len;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + 2 * t;
    if (r0 < p.N)
      *reinterpret_cast<uint32_t*>(o + r0 * o_row + c) = v0 ? Traits<T>::pack(acc[n][0], acc[n][1]) : 0u;
    if (r1 < p.N)
      *reinterpret_cast<uint32_t*>(o + r1 * o_row + c) = v1 ? Traits<T>::pack(acc[n][2], acc[n][3]) : 0u;
  }
}

template <typename T, int D>
void launch(const AttnParams& p, cudaStream_t stream) {
  constexpr int NW = 8, BR = 16 * NW;
  const size_t smem = static_cast<size_t>(BR + 4 * BC) * D * sizeof(T);
  auto kernel = fwd_kernel<T, D, NW>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  dim3 grid((p.N + BR - 1) / BR, p.H, p.B);
  kernel<<<grid, NW * 32, smem, stream>>>(p);
}

}  // namespace
}  // namespace sm80

void forward_sm80(const AttnParams& p, cudaStream_t stream) {
  dispatch_launch(p, "forward (sm80)", [&](auto t, auto d) {
    sm80::launch<typename decltype(t)::type, decltype(d)::value>(p, stream);
  });
}

}  // namespace sctrain::kernels::cuda
