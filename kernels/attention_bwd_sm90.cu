// Backward sigmoid attention, Hopper path (sm_90a): wgmma, operands in shared memory (tiles wholly inside
// the sequence by TMA, a partial one by cp.async zero-filled past the length; Q/dO in 3 stages at d128,
// 2 at d64). One block = 2 warpgroups x 64 keys of one (batch, head); query steps of BR = 64 (d128) or
// 128 (d64). Warpgroup w, its keys Kw (64 rows), per step (transposed, keys x queries):
//   S^T = Kw Q^T, dP^T = Vw dO^T          wgmma m64nBR, A and B K-major in shared memory; S^T retires
//                                         first, so the sigmoid runs while dP^T is on the tensor cores
//   U = tanh((S^T scale + b) / 2)         registers: P^T = (1 + U) / 2, and dS^T = scale dP^T P^T (1 - P^T)
//                                         = (scale / 4) dP^T (1 - U^2), kept without its scale / 4 (the
//                                         epilogue scales dK, the dQ conversion dQ); dS^T also to shared
//                                         memory (stmatrix). No masks: padding rows of K, V, Q, dO are
//                                         zero-filled, so dP^T and dS^T are zero there, and P^T meets zero
//                                         rows of dO (padded keys' dK, dV rows are written as zeros)
//   dQ += dS K                            over all 128 keys, A = dS^T and B = K MN-major; at BR = 64 each
//                                         warpgroup takes half of the columns (m64n(D/2)), at BR = 128 half
//                                         of the queries (m64nD): one 64 x 64 fp32 chunk of the tiled
//                                         accumulator (attention_cuda.h), added by 16-byte atomics
//   dVw += P^T dO, dKw += dS^T Q          wgmma m64nD, A from registers, B MN-major, issued after dQ
//                                         so that dQ's atomics run under them
// Block barriers per step: one once dS^T is in shared memory (dQ reads all 128 keys' rows), and one at
// the start only for a tile loaded by cp.async. None at the end: dS^T is double-buffered and the next
// tiles are loaded after the mid-step barrier, when both warpgroups are past the step that read that stage.
// Each key block starts its sweep over the query blocks at its own offset (x * nqb / nkb), so the
// blocks of one head that run together add into different rows of dQ (less contention in L2).
#include "kernels/attention_cuda.h"
#include "kernels/launch.cuh"
#include "kernels/sm90_common.cuh"
#include "kernels/sm90_tma.cuh"

namespace sctrain::kernels::cuda {
namespace sm90 {
namespace {

constexpr int BC = 128, NT = 256;

struct TmaMaps {
  CUtensorMap q, k, v, dout;
};

// Compiler-visible uses of accumulator registers after a partial wgmma wait (keeps reads in place).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Without the end-of-step barrier, same-run A/Bs: d64 +1-3%; d128 (since v50 without spills) level at
// 1-4K, +3-7% at 8-16K (H100, 3 rounds).
template <typename T, int D, int NS, int BR>
__global__ void __launch_bounds__(NT, 1) bwd_kernel(const AttnParams p, const __grid_constant__ TmaMaps maps) {
  // BR = 128 query steps: dQ's wgmma splits the queries between the warpgroups, not the columns.
  constexpr bool kQueryHalves = BR == 128;
  static_assert(BR == 64 || (BR == 128 && D == 64), "128-query steps at head dim 64 only");
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + BC * D;
  T* sQ = sV + BC * D;        // NS stages
  T* sdO = sQ + NS * BR * D;   // NS stages
  T* sdS = sdO + NS * BR * D;  // [BC keys][BR queries], 2 buffers
  const uint32_t bar0 = smem_addr(sdS + 2 * BC * BR);  // TMA: Q/dO stage barriers at bar0 + 8 st; K/V at bar0 + 8 NS

  const int tid = threadIdx.x, wg = warpgroup_index(), lane = tid % 32, wi = (tid % 128) / 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int k0 = blockIdx.x * BC;
  const int len = clamp_len(p.lengths, b, p.N);
  const int64_t dkv_off = b * p.dkv_stride[0] + h * p.dkv_stride[2], dkv_row = p.dkv_stride[1];
  T* dk = static_cast<T*>(p.dk) + dkv_off;
  T* dv = static_cast<T*>(p.dv) + dkv_off;
  float* dq = p.dq_accum + (static_cast<int64_t>(b) * p.H + h) * dq_tiled_rows(p.N) * D;  // tiled layout
  const int krow = wg * 64 + wi * 16 + g;  // this thread's key rows in the block: krow, krow + 8
  const int kr0 = k0 + krow, kr1 = kr0 + 8;

  float dka[D / 2], dva[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dka[i] = dva[i] = 0.f;

  if (k0 < len) {
    const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
    const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
    const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[2];
    const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(len));
    const float hs = 0.5f * p.scale, hb = 0.5f * bias;
    const int nqb = (len + BR - 1) / BR;

    // Staggered start (see the top): +5-10% at d128; at d64 -2-4% once, +1-7% since v53 (H100, 3 rounds).
    const int i0 = static_cast<int>((static_cast<int64_t>(blockIdx.x) * nqb) / ((len + BC - 1) / BC));
    auto qblock = [&](int it) {  // query block of step it
      const int i = i0 + it;
      return i >= nqb ? i - nqb : i;
    };
    // Tiles wholly inside the sequence come by TMA (thread 0 issues, a barrier counts the bytes); a
    // partial one by cp.async, zero-filled past the length (a NaN in padding must not meet a zero).
    // Every stage load commits a cp.async group, empty or not, so the group waits below stay uniform.
    if (tid == 0)
      for (int i = 0; i <= NS; ++i) mbar_init(bar0 + 8 * i, 1);
    __syncthreads();
    auto q_full = [&](int qb) { return (qb + 1) * BR <= len; };
    auto load_stage = [&](int st, int qb) {  // Q, dO of query block qb into stage st
      const int qn = qb * BR;
      if (q_full(qb)) {
        if (tid == 0) {
          const uint32_t bar = bar0 + 8 * st;
          mbar_arrive_expect_tx(bar, 2 * BR * D * sizeof(T));
          tma_tile<BR, D>(sQ + st * BR * D, &maps.q, h, qn, b, bar);
          tma_tile<BR, D>(sdO + st * BR * D, &maps.dout, h, qn, b, bar);
        }
      } else {
        load_tile<BR, D, NT>(sQ + st * BR * D, q + qn * p.q_stride[1], p.q_stride[1], len - qn, tid);
        load_tile<BR, D, NT>(sdO + st * BR * D, dout + qn * p.do_stride[1], p.do_stride[1], len - qn, tid);
      }
      cp_async_commit();
    };
    const bool kv_full = k0 + BC <= len;
    if (kv_full) {
      if (tid == 0) {
        mbar_arrive_expect_tx(bar0 + 8 * NS, 2 * BC * D * sizeof(T));
        tma_tile<BC, D>(sK, &maps.k, h, k0, b, bar0 + 8 * NS);
        tma_tile<BC, D>(sV, &maps.v, h, k0, b, bar0 + 8 * NS);
      }
    } else {
      load_tile<BC, D, NT>(sK, k + k0 * p.k_stride[1], p.k_stride[1], len - k0, tid);
      load_tile<BC, D, NT>(sV, v + k0 * p.v_stride[1], p.v_stride[1], len - k0, tid);
    }
    load_stage(0, i0);  // its group also holds K/V's cp.async, if any
    if constexpr (NS == 3) {  // one more block ahead; the group is committed (maybe empty) either way
      if (nqb > 1) load_stage(1, qblock(1));
      else cp_async_commit();
    }
    uint32_t phase = 0;  // parity bit per stage barrier
    const T* sKw = sK + wg * 64 * 64;  // this warpgroup's 64 keys (in each column half)
    const T* sVw = sV + wg * 64 * 64;

    for (int it = 0; it < nqb; ++it) {
      const int st = it % NS, i = qblock(it);
      // Wait for cp.async groups only in a step whose tiles came (partly) by cp.async, since the wait
      // (DEPBAR) also holds until the last step's dQ atomics have read their source registers (same-run
      // A/B at d64: +1-5% at 4-16K).
      if (!q_full(i) || (it == 0 && !kv_full)) cp_async_wait<NS - 2>();  // this step's tiles (the next step's group may be pending at NS = 3)
      if (q_full(i)) {
        mbar_wait(bar0 + 8 * st, (phase >> st) & 1);
        phase ^= 1u << st;
      }
      if (it == 0 && kv_full) mbar_wait(bar0 + 8 * NS, 0);
      // A stage that came by TMA is ready for each thread once its barrier completes; the block waits
      // together only for cp.async tiles, which each thread loaded a part of (same-run A/B: +1-5%).
      if (!q_full(i) || (it == 0 && !kv_full)) {
        fence_proxy_async();
        __syncthreads();
      }
      const T* cQ = sQ + st * BR * D;
      const T* cdO = sdO + st * BR * D;

      float s[BR / 2], dp[BR / 2];
      const uint64_t desc_k = desc(sKw, 16, 1024), desc_v = desc(sVw, 16, 1024), desc_q = desc(cQ, 16, 1024),
                     desc_do = desc(cdO, 16, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int half = kk / 4, koff = (kk % 4) * 16;
        mma_ss<T, BR>(s, desc_at<T>(desc_k, half * BC * 64 + koff), desc_at<T>(desc_q, half * BR * 64 + koff), kk > 0);
      }
      wgmma_commit();  // S^T alone, then dP^T
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int half = kk / 4, koff = (kk % 4) * 16;
        mma_ss<T, BR>(dp, desc_at<T>(desc_v, half * BC * 64 + koff), desc_at<T>(desc_do, half * BR * 64 + koff),
                      kk > 0);
      }
      wgmma_commit();
      wgmma_wait<1>();  // S^T done: U (in place) while dP^T runs
      fence_regs(s);
#pragma unroll
      for (int r = 0; r < BR / 2; ++r) s[r] = tanh_approx(fmaf(s[r], hs, hb));
      wgmma_wait<0>();
      fence_regs(dp);

      uint32_t pf[BR / 16][4], dsf[BR / 16][4];
#pragma unroll
      for (int n = 0; n < BR / 8; ++n) {
        float pv[4], dsv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float u = s[4 * n + e], d = dp[4 * n + e];
          pv[e] = fmaf(0.5f, u, 0.5f);
          dsv[e] = fmaf(-d * u, u, d);  // dP (1 - U^2): the score's gradient times 4 / scale
        }
        pf[n / 2][(n & 1) * 2 + 0] = Traits<T>::pack(pv[0], pv[1]);
        pf[n / 2][(n & 1) * 2 + 1] = Traits<T>::pack(pv[2], pv[3]);
        dsf[n / 2][(n & 1) * 2 + 0] = Traits<T>::pack(dsv[0], dsv[1]);
        dsf[n / 2][(n & 1) * 2 + 1] = Traits<T>::pack(dsv[2], dsv[3]);
      }
      {
        // dS^T to shared memory by stmatrix, 16 keys x 16 queries each: matrices (keys 0-7 | 8-15) x
        // (queries 16m..+7 | +8..+15) of this warp's rows, the order of dsf[m]'s registers. (Same-run
        // A/B against two 4-byte stores per pair: backward +8-9% at d64, +0-4% at d128.)
        const int mrow = wg * 64 + wi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, mcol = (lane >> 4) * 8;
#pragma unroll
        for (int m = 0; m < BR / 16; ++m)
          stmatrix_x4(smem_addr(sdS + (it & 1) * BC * BR + tile_off<BC>(mrow, 16 * m + mcol)), dsf[m][0], dsf[m][1], dsf[m][2], dsf[m][3]);
      }

      // dQ (64 queries x D) += dS K over all 128 keys; warpgroup w takes columns [w*D/2, (w+1)*D/2).
      // A = dS^T (MN-major), B = K (MN-major, starting inside the swizzle atom at d64).
      // Then dV += P^T dO, dK += dS^T Q: k = 16 queries per step (2048 bytes), N = D across column halves.
      fence_proxy_async();  // sdS written by ordinary stores, read by the tensor cores
      __syncthreads();      // dS^T of all 128 keys complete
      // Both warpgroups finished step it - 1, so its stage takes step it + NS - 1's tiles.
      if (it + NS - 1 < nqb) load_stage((it + NS - 1) % NS, qblock(it + NS - 1));
      else cp_async_commit();
      {
        constexpr int NQ = kQueryHalves ? D : D / 2;
        const T* sKc = kQueryHalves ? sK : sK + (D == 128 ? wg * BC * 64 : wg * 32);
        const T* sdSb = sdS + (it & 1) * BC * BR;
        const T* sdSw = kQueryHalves ? sdSb + wg * BC * 64 : sdSb;
        float dqa[NQ / 2];
        const uint64_t desc_ds = desc(sdSw, 8192, 1024), desc_kc = desc(sKc, 8192, 1024),
                       desc_do_t = desc(cdO, BR * 128, 1024), desc_q_t = desc(cQ, BR * 128, 1024);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk)
          mma_ss_tt<T, NQ>(dqa, desc_at<T>(desc_ds, kk * 16 * 64), desc_at<T>(desc_kc, kk * 16 * 64), kk > 0);
        wgmma_commit();
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) mma_rs_tb<T, D>(dva, pf[kk], desc_at<T>(desc_do_t, kk * 16 * 64));
#pragma unroll
        for (int kk = 0; kk < BR / 16; ++kk) mma_rs_tb<T, D>(dka, dsf[kk], desc_at<T>(desc_q_t, kk * 16 * 64));
        wgmma_commit();
        wgmma_wait<1>();  // dQ done; dV/dK still on the tensor cores under the atomics
        // This warpgroup's 64 x 64 piece of dQ is one chunk of the tiled layout (same-run A/B against 8-byte
        // atomics into [B, N, H, D] rows: +5-18% at d64, +3-23% at d128). Rows past the length add zeros
        // (their dS rows are zero) and are not read back, so no row checks.
        static_assert(NQ == 64, "one m64n64 chunk per warpgroup");
        const int rb = kQueryHalves ? 2 * i + wg : i;  // 64-row block
        if (rb * 64 < len) atomic_add_chunk(dq + (static_cast<int64_t>(rb) * (D / 64) + (kQueryHalves ? 0 : wg)) * 4096, dqa, wi, lane);
        wgmma_wait<0>();
      }
    }
    wgmma_wait<0>();  // nothing in flight past the loop
  }

  const bool v0 = kr0 < len, v1 = kr1 < len;
  const float ds_factor = hopper_ds_factor(p);  // dS^T was kept without it
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dka[i] *= ds_factor;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + 2 * t;
    if (kr0 < p.N) {
      *reinterpret_cast<uint32_t*>(dk + kr0 * dkv_row + c) = v0 ? Traits<T>::pack(dka[4 * n], dka[4 * n + 1]) : 0u;
      *reinterpret_cast<uint32_t*>(dv + kr0 * dkv_row + c) = v0 ? Traits<T>::pack(dva[4 * n], dva[4 * n + 1]) : 0u;
    }
    if (kr1 < p.N) {
      *reinterpret_cast<uint32_t*>(dk + kr1 * dkv_row + c) =
          v1 ? Traits<T>::pack(dka[4 * n + 2], dka[4 * n + 3]) : 0u;
      *reinterpret_cast<uint32_t*>(dv + kr1 * dkv_row + c) =
          v1 ? Traits<T>::pack(dva[4 * n + 2], dva[4 * n + 3]) : 0u;
    }
  }
}

template <typename T, int D>
bool launch(const AttnParams& p, cudaStream_t stream) {
  // Same-run A/Bs: d128 TMA +4-5%, its third Q/dO stage +6-8% at N = 2048 (0-1% elsewhere); d64 128-query
  // steps with TMA +3-5% over 64-query steps (with cp.async -3%, with 3 stages no better than 2).
  constexpr int BR = D == 64 ? 128 : 64, NS = D == 64 ? 2 : 3;
  TmaMaps maps{};
  if (!(encode_tile_map<T, D>(&maps.q, p.q, p.q_stride, p, BR) && encode_tile_map<T, D>(&maps.k, p.k, p.k_stride, p, BC) &&
        encode_tile_map<T, D>(&maps.v, p.v, p.v_stride, p, BC) &&
        encode_tile_map<T, D>(&maps.dout, p.dout, p.do_stride, p, BR)))
    return false;
  const size_t smem = static_cast<size_t>(2 * BC * D + 2 * NS * BR * D + 2 * BC * BR) * sizeof(T) + 8 * (NS + 1) + 1024;
  auto kernel = bwd_kernel<T, D, NS, BR>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  dim3 grid((p.N + BC - 1) / BC, p.H, p.B);
  kernel<<<grid, NT, smem, stream>>>(p, maps);
  return true;
}

}  // namespace
}  // namespace sm90

bool backward_sm90(const AttnParams& p, cudaStream_t stream) {
  return dispatch_launch(p, "backward (sm90)", [&](auto t, auto d) {
    return sm90::launch<typename decltype(t)::type, decltype(d)::value>(p, stream);
  });
}

}  // namespace sctrain::kernels::cuda
