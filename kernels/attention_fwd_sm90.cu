// Forward sigmoid attention, Hopper path (sm_90a): wgmma with operands in shared memory.
// One block = 1 producer + NWG consumer warpgroups (2, or 4 at d64 past N = 2048); each consumer owns
// 64 query rows of one (batch, head). Key blocks of BC = 64, in a ring of 4 stages (8 with 4 consumers).
// Producer fills the K/V ring: key blocks wholly inside the sequence (and Q with block 0) by TMA,
// issued by one thread, the stage's "full" barrier counting the bytes; a sequence's last partial block
// by cp.async, zero-filled past the length, each thread's cp.async.mbarrier.arrive counting on that
// barrier. Consumers wait on "full", release a stage through its "empty" barrier once PV of that
// block retired, and never meet each other, so one's sigmoid runs under the other's wgmma.
// d64: two blocks per SM (producer at 24 registers, consumers at 104), so the other block's warps
// also fill the tensor cores during a sigmoid, or past N = 2048 one block of four consumers (24 / 112).
// d128: one block per SM (40 / 232 registers), and S_{j+1} is issued before the sigmoid of block j,
// to run under it.
// O: rows past the length are written as zeros; at d128 a warpgroup's 64 rows wholly inside the sequence
// go out through shared memory by TMA store.
// S = Q K^T: wgmma m64nBCk16, A and B from shared memory (K-major, 128-byte swizzle).
// O += P V:  wgmma m64nDk16, A = P from registers, B = V from shared memory (MN-major).
// Shared tile layout: column halves of 64 elements, each [rows][64] with 16-byte chunks
// XOR-swizzled by (row & 7): the canonical 128-byte-swizzle layout of wgmma.
#include "kernels/attention_cuda.h"
#include "kernels/launch.cuh"
#include "kernels/sm80_common.cuh"
#include "kernels/sm90_common.cuh"
#include "kernels/sm90_tma.cuh"

#include <cstdlib>
#include <type_traits>

namespace sctrain::kernels::cuda {
namespace sm90 {
namespace {

struct TmaMaps {
  CUtensorMap q, k, v, o;  // o: boxes of 64 rows (one warpgroup's)
};
// Producer's tile load (128 threads): a thread keeps one 16-byte column chunk, so its swizzle is fixed
// and the addresses step by a constant (few registers: the producer runs with 24 or 40).
template <int ROWS, int D, typename T>
__device__ __forceinline__ void load_tile_lean(T* s, const T* g, int64_t stride, int valid, int ptid) {
  constexpr int CH = D / 8, RSTEP = 128 / CH;
  const int r = ptid / CH, c = (ptid % CH) * 8;
  uint32_t dst = smem_addr(s + tile_off<ROWS>(r, c));
  const T* src = g + r * stride + c;
#pragma unroll 4
  for (int i = 0; i < ROWS / RSTEP; ++i) {
    const bool ok = r + i * RSTEP < valid;
    cp_async16(dst, ok ? src : g, ok ? 16 : 0);
    dst += RSTEP * 64 * sizeof(T);
    src += RSTEP * stride;
  }
}

// Warpgroup 0 produces, warpgroups 1..NWG consume. CTAS blocks per SM. d64: 2 blocks of 2 consumers
// (registers 24 / 104) or 1 of 4 (24 / 112), no S prefetch; d128: 1 of 2 (40 / 232), S_{j+1} issued
// before the sigmoid of j.
template <typename T, int D, int BC, int STAGES, int CTAS, int NWG>
__global__ void __launch_bounds__(128 * (NWG + 1), CTAS) fwd_kernel(const AttnParams p, const __grid_constant__ TmaMaps maps) {
  constexpr int BR = 64 * NWG;
  extern __shared__ unsigned char smem_raw[];
  // 1024-byte alignment for the swizzled tiles.
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + BR * D;           // STAGES stages
  T* sV = sK + STAGES * BC * D;  // STAGES stages
  // full[s]: stage s landed (128 producer arrivals); empty[s]: 8 consumer warps are done with it.
  const uint32_t full0 = smem_addr(sV + STAGES * BC * D), empty0 = full0 + 8 * STAGES;

  const int tid = threadIdx.x, wg = warpgroup_index() - 1, lane = tid % 32, warp_in_wg = (tid % 128) / 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = blockIdx.x * BR;
  const int len = clamp_len(p.lengths, b, p.N);
  const int64_t o_row = static_cast<int64_t>(p.H) * D;
  T* o = static_cast<T*>(p.o) + (static_cast<int64_t>(b) * p.N) * o_row + static_cast<int64_t>(h) * D;
  const int r0 = q0 + wg * 64 + warp_in_wg * 16 + g, r1 = r0 + 8;

  auto write_zero_rows = [&] {  // this thread's part of rows r0, r1 (padding)
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int c = n * 8 + 2 * t;
      if (r0 < p.N) *reinterpret_cast<uint32_t*>(o + r0 * o_row + c) = 0u;
      if (r1 < p.N) *reinterpret_cast<uint32_t*>(o + r1 * o_row + c) = 0u;
    }
  };
  if (q0 >= len) {
    if (wg >= 0) write_zero_rows();
    return;
  }
  const int nkb = (len + BC - 1) / BC;
  // Consumers whose 64 rows are all padding (in a sequence's last block) only write zeros; the stages
  // then wait for the active ones' warps alone.
  const int active = min(NWG, (len - q0 + 63) / 64);
  if (tid == 0) {
    if constexpr (D == 128) {  // at d64, with the TMA store below, -2-3% at 8K
      tma_prefetch_map(&maps.q);
      tma_prefetch_map(&maps.k);
      tma_prefetch_map(&maps.v);
    }
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 128);
      mbar_init(empty0 + 8 * s, 4 * active);
    }
  }
  __syncthreads();

  if (wg < 0) {  // producer warpgroup
    if constexpr (D == 128) asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    else asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
    const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
    const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];
    // Key blocks wholly inside the sequence come by TMA (one thread issues, the stage's barrier counts
    // the bytes); a sequence's last partial block by cp.async, which zero-fills the rows past its length
    // (TMA zero-fills only past the tensor's end, and a NaN in V's padding would reach O as 0 * NaN).
    // Q rides with block 0, by the same means (rows past the length only reach discarded outputs).
    const int full_blocks = len / BC;
    for (int blk = 0; blk < nkb; ++blk) {
      const int kn = blk * BC, st = blk % STAGES;
      if (blk >= STAGES) mbar_wait(empty0 + 8 * st, ((blk / STAGES) + 1) & 1);
      if (blk < full_blocks) {
        if (tid == 0) {
          const uint32_t bar = full0 + 8 * st;
          mbar_arrive_expect_tx(bar, (blk == 0 ? BR + 2 * BC : 2 * BC) * D * sizeof(T));
          if (blk == 0) tma_tile<BR, D>(sQ, &maps.q, h, q0, b, bar);
          tma_tile<BC, D>(sK + st * BC * D, &maps.k, h, kn, b, bar);
          tma_tile<BC, D>(sV + st * BC * D, &maps.v, h, kn, b, bar);
        } else {
          mbar_arrive(full0 + 8 * st);
        }
      } else {
        if (blk == 0) load_tile_lean<BR, D>(sQ, q + q0 * p.q_stride[1], p.q_stride[1], len - q0, tid);
        load_tile_lean<BC, D>(sK + st * BC * D, k + kn * p.k_stride[1], p.k_stride[1], len - kn, tid);
        load_tile_lean<BC, D>(sV + st * BC * D, v + kn * p.v_stride[1], p.v_stride[1], len - kn, tid);
        mbar_arrive_cp_async(full0 + 8 * st);
      }
    }
    cp_async_wait<0>();
    return;
  }

  if (wg >= active) {
    write_zero_rows();
    return;
  }
  if constexpr (D == 128) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  else if constexpr (NWG == 4) asm volatile("setmaxnreg.inc.sync.aligned.u32 112;\n" ::: "memory");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 104;\n" ::: "memory");
  const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(len));
  const float hs = 0.5f * p.scale, hb = 0.5f * bias;
  auto wait_full = [&](int blk) {
    mbar_wait(full0 + 8 * (blk % STAGES), (blk / STAGES) & 1);
    fence_proxy_async();  // cp.async writes -> tensor-core reads (TMA writes need no fence)
  };

  // Zeroed by volatile asm so the compiler cannot sink it past the first wgmma (ptxas C7515).
  float acc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) asm volatile("mov.b32 %0, 0;\n" : "=f"(acc[i]));
  const T* sQw = sQ + wg * 64 * 64;  // this warpgroup's 64 rows (in each column half)
  const uint64_t desc_q = desc(sQw, 16, 1024), desc_k0 = desc(sK, 16, 1024), desc_v0 = desc(sV, BC * 128, 1024);

  // S = Q K^T (64 x BC per warpgroup), issued asynchronously.
  auto issue_s = [&](float(&s)[BC / 2], int blk) {
    const uint64_t desc_k = desc_at<T>(desc_k0, (blk % STAGES) * BC * D);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int half = kk / 4, koff = (kk % 4) * 16;
      mma_ss<T, BC>(s, desc_at<T>(desc_q, half * BR * 64 + koff), desc_at<T>(desc_k, half * BC * 64 + koff), kk > 0);
    }
    wgmma_commit();
  };
  auto release = [&](int blk) {  // this warp is done with block blk's stage
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * (blk % STAGES));
  };
  // No key mask: the rows of K and V past the length are zero-filled (cp.async), so P there is
  // sigmoid(b), finite, and meets V's zero rows: P V gets exactly nothing from them. (Masking every
  // score cost two instructions each; without it the forward measured +3-11%.)
  auto sigmoid_p = [&](uint32_t(&pf)[BC / 16][4], const float(&s)[BC / 2]) {
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
      float pv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) pv[e] = sigmoid_half_arg(fmaf(s[4 * n + e], hs, hb));
      pf[n / 2][(n & 1) * 2 + 0] = Traits<T>::pack(pv[0], pv[1]);
      pf[n / 2][(n & 1) * 2 + 1] = Traits<T>::pack(pv[2], pv[3]);
    }
  };
  // O += P V: k = 16 keys per step (2048 bytes of V), N = D across the column halves.
  auto issue_pv = [&](const uint32_t(&pf)[BC / 16][4], int j) {
    const uint64_t desc_v = desc_at<T>(desc_v0, (j % STAGES) * BC * D);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) mma_rs_tb<T, D>(acc, pf[kk], desc_at<T>(desc_v, kk * 16 * 64));
    wgmma_commit();
  };

  // One key block: S_j is in s (issued), S_{j+1} goes to s_next while P_j is computed.
  auto step = [&](int j, float(&s)[BC / 2], float(&s_next)[BC / 2]) {
    if (j + 1 < nkb) wait_full(j + 1);
    wgmma_wait<0>();  // S_j and PV_{j-1} done (ptxas needs a full wait before reading S_j)
    if (j > 0) release(j - 1);
    if (j + 1 < nkb) issue_s(s_next, j + 1);
    uint32_t pf[BC / 16][4];
    sigmoid_p(pf, s);
    issue_pv(pf, j);
  };
  if constexpr (D == 128) {
    float sa[BC / 2], sb[BC / 2];
    wait_full(0);
    issue_s(sa, 0);
    for (int j = 0; j < nkb; j += 2) {
      step(j, sa, sb);
      if (j + 1 < nkb) step(j + 1, sb, sa);
    }
  } else {
    // The other block's warps fill the tensor cores during this one's sigmoid. PV_j retires before
    // S_{j+1} is issued: with both in flight (S_{j+1} under PV_j, as before v38) the consumer's 104
    // registers were too few and ptxas serialized every wgmma (C7512).
    for (int j = 0; j < nkb; ++j) {
      float sc[BC / 2];
      wait_full(j);
      issue_s(sc, j);
      wgmma_wait<0>();
      uint32_t pf[BC / 16][4];
      sigmoid_p(pf, sc);
      issue_pv(pf, j);
      wgmma_wait<0>();
      release(j);
    }
  }
  wgmma_wait<0>();

  // d128, a warpgroup's 64 rows wholly inside the sequence: O goes through its own rows of sQ (free once
  // its last wgmma retired; same swizzled layout) and out by one TMA store per column half, instead of
  // 64 checked 4-byte stores per thread (ncu at N = 1K: 14% of the samples). d64 keeps the stores
  // (same-run A/B: +2% at 1K, -2-3% at 8K).
  if constexpr (D == 128) {
    // Indices from threadIdx / blockIdx again: keeping them live through the loop costs a spill.
    const int w0 = blockIdx.x * BR + (threadIdx.x / 128 - 1) * 64;
    if (w0 + 64 <= len) {
      const uint32_t sO = smem_addr(sQw);
      const int lr = threadIdx.x % 128 / 32 * 16 + threadIdx.x % 32 / 4, c2 = 2 * (threadIdx.x % 4);
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {  // rows lr, lr + 8, columns 8n + c2, + 1
        st_shared_u32(sO + sizeof(T) * tile_off<BR>(lr, 8 * n + c2), Traits<T>::pack(acc[4 * n], acc[4 * n + 1]));
        st_shared_u32(sO + sizeof(T) * tile_off<BR>(lr + 8, 8 * n + c2), Traits<T>::pack(acc[4 * n + 2], acc[4 * n + 3]));
      }
      fence_proxy_async();  // generic writes -> the TMA unit's reads
      // This warpgroup's writes. Immediate barrier ids: with `bar.sync %reg` ptxas reserves all 16.
      if (wg == 0) asm volatile("bar.sync 1, 128;\n" ::: "memory");
      else asm volatile("bar.sync 2, 128;\n" ::: "memory");
      if (threadIdx.x % 128 == 0) {
#pragma unroll
        for (int half = 0; half < D / 64; ++half)
          tma_store_4d(&maps.o, sO + half * BR * 64 * sizeof(T), half * 64, blockIdx.y, w0, blockIdx.z);
        tma_store_wait();
      }
      return;
    }
  }
  const bool v0 = r0 < len, v1 = r1 < len;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + 2 * t;
    if (r0 < p.N)
      *reinterpret_cast<uint32_t*>(o + r0 * o_row + c) = v0 ? Traits<T>::pack(acc[4 * n], acc[4 * n + 1]) : 0u;
    if (r1 < p.N)
      *reinterpret_cast<uint32_t*>(o + r1 * o_row + c) =
          v1 ? Traits<T>::pack(acc[4 * n + 2], acc[4 * n + 3]) : 0u;
  }
}

// Tensor maps of Q, K, V (boxes of BR query rows, BC key rows) and, at d128, O (64 rows); false: the caller
// takes the portable path.
template <typename T, int D, int BC, int BR>
bool make_maps(const AttnParams& p, TmaMaps& m) {
  const int64_t o_st[3] = {static_cast<int64_t>(p.N) * p.H * D, static_cast<int64_t>(p.H) * D, D};
  return encode_tile_map<T, D>(&m.q, p.q, p.q_stride, p, BR) && encode_tile_map<T, D>(&m.k, p.k, p.k_stride, p, BC) &&
         encode_tile_map<T, D>(&m.v, p.v, p.v_stride, p, BC) && (D == 64 || encode_tile_map<T, D>(&m.o, p.o, o_st, p, 64));
}

template <typename T, int D, int BC, int STAGES, int CTAS, int NWG>
bool launch_variant(const AttnParams& p, cudaStream_t stream) {
  constexpr int BR = 64 * NWG, NT = 128 * (NWG + 1);
  const size_t smem = static_cast<size_t>(BR + 2 * STAGES * BC) * D * sizeof(T) + 16 * STAGES + 1024;
  TmaMaps maps{};
  if (!make_maps<T, D, BC, BR>(p, maps)) return false;
  auto kernel = fwd_kernel<T, D, BC, STAGES, CTAS, NWG>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  dim3 grid((p.N + BR - 1) / BR, p.H, p.B);
  kernel<<<grid, NT, smem, stream>>>(p, maps);
  return true;
}

template <typename T, int D>
bool launch(const AttnParams& p, cudaStream_t stream) {
  // d128: one block per SM (the consumers' registers), 4 K/V stages (5 measured no different).
  if constexpr (D == 128) {
    return launch_variant<T, D, 64, 4, 1, 2>(p, stream);
  } else {
    // d64 up to N = 2048: two blocks of 128 query rows per SM, 4 stages (same-run A/B against one block
    // with 128-key blocks, 6 stages and the S prefetch: +3-19%, most at short N); one block's fill and
    // drain run under the other's steps. Longer: one block of 256 rows (four consumers at 112
    // registers, 8 stages), which reads each K/V block once for twice the queries (same-run A/B, H100,
    // 3 rounds: +4% at 4K, +5% at 8K, +8% at 16K, +7% at the 160m model's 2 x 8192 x 16 heads; level at
    // 2K, -7% at 1K). SCTRAIN_ATTENTION_FWD_ROWS=128|256 overrides the choice (tests run both).
    const char* env = std::getenv("SCTRAIN_ATTENTION_FWD_ROWS");
    const int rows = env != nullptr ? std::atoi(env) : (p.N > 2048 ? 256 : 128);
    if (rows == 256) return launch_variant<T, D, 64, 8, 1, 4>(p, stream);
    return launch_variant<T, D, 64, 4, 2, 2>(p, stream);
  }
}

}  // namespace
}  // namespace sm90

bool forward_sm90(const AttnParams& p, cudaStream_t stream) {
  return dispatch_launch(p, "forward (sm90)", [&](auto t, auto d) {
    return sm90::launch<typename decltype(t)::type, decltype(d)::value>(p, stream);
  });
}

}  // namespace sctrain::kernels::cuda
