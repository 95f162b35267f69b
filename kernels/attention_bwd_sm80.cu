// Backward sigmoid attention, portable path (sm_80+): mma.sync m16n8k16, cp.async double buffering.
// One block = BC = 16*NW keys of one (batch, head), looping over query blocks of BR up to the length.
// Each warp owns 16 keys and computes, transposed (keys x queries):
//   S^T = K Q^T,  P^T = sigmoid(S^T*scale + b),  dP^T = V dO^T,  dS^T = scale * dP^T P^T (1 - P^T)
//   dV += P^T dO,  dK += dS^T Q,  and dQ += dS K through shared memory and fp32 atomics.
// Sigmoid needs no row statistics, so there is no preprocessing pass.
#include "kernels/attention_cuda.h"
#include "kernels/launch.cuh"
#include "kernels/sm80_common.cuh"

namespace sctrain::kernels::cuda {
namespace sm80 {
namespace {

template <typename T, int D, int NW, int BR>
__global__ void __launch_bounds__(NW * 32) bwd_kernel(const AttnParams p) {
  constexpr int BC = 16 * NW, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + BC * D;
  T* sQ = sV + BC * D;       // 2 stages
  T* sdO = sQ + 2 * BR * D;  // 2 stages
  T* sdS = sdO + 2 * BR * D; // BC x BR, dS^T

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int k0 = blockIdx.x * BC;
  const int len = clamp_len(p.lengths, b, p.N);
  const int64_t o_row = static_cast<int64_t>(p.H) * D;
  const int64_t off = static_cast<int64_t>(b) * p.N * o_row + static_cast<int64_t>(h) * D;
  const int64_t dkv_off = b * p.dkv_stride[0] + h * p.dkv_stride[2], dkv_row = p.dkv_stride[1];
  T* dk = static_cast<T*>(p.dk) + dkv_off;
  T* dv = static_cast<T*>(p.dv) + dkv_off;
  float* dq = p.dq_accum + off;
  const int kr0 = k0 + warp * 16 + g, kr1 = kr0 + 8;  // this thread's two key rows

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;

  if (k0 < len) {
    const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
    const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
    const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[2];
    const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(len));
    const float hs = 0.5f * p.scale, hb = 0.5f * bias;
    const int nqb = (len + BR - 1) / BR;

    load_tile<BC, D, NT>(sK, k + k0 * p.k_stride[1], p.k_stride[1], len - k0, tid);
    load_tile<BC, D, NT>(sV, v + k0 * p.v_stride[1], p.v_stride[1], len - k0, tid);
    load_tile<BR, D, NT>(sQ, q, p.q_stride[1], len, tid);
    load_tile<BR, D, NT>(sdO, dout, p.do_stride[1], len, tid);
    cp_async_commit();

    // dQ work split: warp w takes query rows (w % RT)*16 and a slice of D.
    constexpr int RT = BR / 16, DSPLIT = NW / RT, DQN = D / 8 / DSPLIT;
    static_assert(NW % RT == 0 && DQN % 2 == 0, "dQ split");
    const int qrow = (warp % RT) * 16, dcol0 = (warp / RT) * (D / DSPLIT);

    for (int i = 0; i < nqb; ++i) {
      const int st = i & 1;
      if (i + 1 < nqb) {
        const int qn = (i + 1) * BR;
        load_tile<BR, D, NT>(sQ + (st ^ 1) * BR * D, q + qn * p.q_stride[1], p.q_stride[1], len - qn, tid);
        load_tile<BR, D, NT>(sdO + (st ^ 1) * BR * D, dout + qn * p.do_stride[1], p.do_stride[1],
                             len - qn, tid);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const T* cQ = sQ + st * BR * D;
      const T* cdO = sdO + st * BR * D;

      float s[BR / 8][4], dp[BR / 8][4];
#pragma unroll
      for (int n = 0; n < BR / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[4], va[4];
        const int row = warp * 16 + (lane % 8) + ((lane / 8) & 1) * 8, col = kk * 16 + (lane / 16) * 8;
        ldsm_x4(ka, smem_addr(sK + swz<D>(row, col)));
        ldsm_x4(va, smem_addr(sV + swz<D>(row, col)));
#pragma unroll
        for (int np = 0; np < BR / 16; ++np) {
          uint32_t bq[4], bo[4];
          const int qr = np * 16 + (lane % 8) + (lane / 16) * 8, qc = kk * 16 + ((lane / 8) & 1) * 8;
          ldsm_x4(bq, smem_addr(cQ + swz<D>(qr, qc)));
          ldsm_x4(bo, smem_addr(cdO + swz<D>(qr, qc)));
          mma<T>(s[2 * np], ka, bq[0], bq[1]);
          mma<T>(s[2 * np + 1], ka, bq[2], bq[3]);
          mma<T>(dp[2 * np], va, bo[0], bo[1]);
          mma<T>(dp[2 * np + 1], va, bo[2], bo[3]);
        }
      }
      // P^T and dS^T (keys past the length get zero; padded queries have dO = 0 so dS = 0).
      const bool m0 = kr0 < len, m1 = kr1 < len;
      uint32_t pf[BR / 16][4], dsf[BR / 16][4];
#pragma unroll
      for (int n = 0; n < BR / 8; ++n) {
        float pv[4], dsv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float pe = sigmoid_half_arg(fmaf(s[n][e], hs, hb));
          if (!(e < 2 ? m0 : m1)) pe = 0.f;
          pv[e] = pe;
          dsv[e] = p.scale * dp[n][e] * pe * (1.f - pe);
        }
        pf[n / 2][(n & 1) * 2 + 0] = Traits<T>::pack(pv[0], pv[1]);
        pf[n / 2][(n & 1) * 2 + 1] = Traits<T>::pack(pv[2], pv[3]);
        dsf[n / 2][(n & 1) * 2 + 0] = Traits<T>::pack(dsv[0], dsv[1]);
        dsf[n / 2][(n & 1) * 2 + 1] = Traits<T>::pack(dsv[2], dsv[3]);
        // dS^T to shared memory for dQ.
        const int c = n * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(sdS + swz<BR>(warp * 16 + g, c)) = dsf[n / 2][(n & 1) * 2 + 0];
        *reinterpret_cast<uint32_t*>(sdS + swz<BR>(warp * 16 + g + 8, c)) = dsf[n / 2][(n & 1) * 2 + 1];
      }
      // dV += P^T dO, dK += dS^T Q (k = queries).
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) {
#pragma unroll
        for (int dq2 = 0; dq2 < D / 16; ++dq2) {
          uint32_t bo[4], bq[4];
          const int qr = kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8, col = dq2 * 16 + (lane / 16) * 8;
          ldsm_x4_t(bo, smem_addr(cdO + swz<D>(qr, col)));
          ldsm_x4_t(bq, smem_addr(cQ + swz<D>(qr, col)));
          mma<T>(dva[2 * dq2], pf[kk], bo[0], bo[1]);
          mma<T>(dva[2 * dq2 + 1], pf[kk], bo[2], bo[3]);
          mma<T>(dka[2 * dq2], dsf[kk], bq[0], bq[1]);
          mma<T>(dka[2 * dq2 + 1], dsf[kk], bq[2], bq[3]);
        }
      }
      __syncthreads();  // sdS complete
      // dQ[qrow.., dcol0..] += dS K  (A = dS from dS^T via ldmatrix.trans, B = K via ldmatrix.trans)
      {
        float dqa[DQN][4];
#pragma unroll
        for (int n = 0; n < DQN; ++n) dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
          uint32_t a[4];
          const int key = kk * 16 + (lane % 8) + (lane / 16) * 8, qc = qrow + ((lane / 8) & 1) * 8;
          ldsm_x4_t(a, smem_addr(sdS + swz<BR>(key, qc)));
#pragma unroll
          for (int np = 0; np < DQN / 2; ++np) {
            uint32_t bk[4];
            const int kr = kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8;
            const int col = dcol0 + np * 16 + (lane / 16) * 8;
            ldsm_x4_t(bk, smem_addr(sK + swz<D>(kr, col)));
            mma<T>(dqa[2 * np], a, bk[0], bk[1]);
            mma<T>(dqa[2 * np + 1], a, bk[2], bk[3]);
          }
        }
        const int qa = i * BR + qrow + g, qb = qa + 8;
#pragma unroll
        for (int n = 0; n < DQN; ++n) {
          const int c = dcol0 + n * 8 + 2 * t;
          if (qa < len) atomic_add2(dq + qa * o_row + c, dqa[n][0], dqa[n][1]);
          if (qb < len) atomic_add2(dq + qb * o_row + c, dqa[n][2], dqa[n][3]);
        }
      }
      __syncthreads();  // stage and sdS free for the next step
    }
  }

  // Write dK, dV; padded keys get zeros.
  const bool v0 = kr0 < len, v1 = kr1 < len;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + 2 * t;
    if (kr0 < p.N) {
      *reinterpret_cast<uint32_t*>(dk + kr0 * dkv_row + c) = v0 ? Traits<T>::pack(dka[n][0], dka[n][1]) : 0u;
      *reinterpret_cast<uint32_t*>(dv + kr0 * dkv_row + c) = v0 ? Traits<T>::pack(dva[n][0], dva[n][1]) : 0u;
    }
    if (kr1 < p.N) {
      *reinterpret_cast<uint32_t*>(dk + kr1 * dkv_row + c) = v1 ? Traits<T>::pack(dka[n][2], dka[n][3]) : 0u;
      *reinterpret_cast<uint32_t*>(dv + kr1 * dkv_row + c) = v1 ? Traits<T>::pack(dva[n][2], dva[n][3]) : 0u;
    }
  }
}

template <typename T, int D>
void launch(const AttnParams& p, cudaStream_t stream) {
  // d128: 32 queries per step keeps S^T, dP^T and the dK, dV accumulators in registers.
  constexpr int NW = D == 128 ? 4 : 8, BC = 16 * NW, BR = D == 128 ? 32 : 64;
  const size_t smem = static_cast<size_t>(2 * BC * D + 4 * BR * D + BC * BR) * sizeof(T);
  auto kernel = bwd_kernel<T, D, NW, BR>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  dim3 grid((p.N + BC - 1) / BC, p.H, p.B);
  kernel<<<grid, NW * 32, smem, stream>>>(p);
}

}  // namespace
}  // namespace sm80

void backward_sm80(const AttnParams& p, cudaStream_t stream) {
  dispatch_launch(p, "backward (sm80)", [&](auto t, auto d) {
    sm80::launch<typename decltype(t)::type, decltype(d)::value>(p, stream);
  });
}

}  // namespace sctrain::kernels::cuda
