// Forward sigmoid attention, Hopper path (sm_90a): wgmma with operands in shared memory.
// One block = 2 warpgroups x 64 query rows of one (batch, head); key blocks of BC = 128 (d64) or 64 (d128).
// S = Q K^T: wgmma m64n128k16, A and B from shared memory (K-major, 128-byte swizzle).
// O += P V:  wgmma m64nDk16, A = P from registers, B = V from shared memory (MN-major).
// Tiles are loaded with cp.async (zero-filled past the length) into a 4-stage ring, two blocks ahead;
// S_{j+1} = Q K_{j+1}^T runs on the tensor cores while the sigmoid of block j is computed, and PV_j
// is retired only after the next step's barrier.
// Shared tile layout: column halves of 64 elements, each [rows][64] with 16-byte chunks
// XOR-swizzled by (row & 7): the canonical 128-byte-swizzle layout of wgmma.
#include "kernels/attention_cuda.h"
#include "kernels/sm80_common.cuh"
#include "kernels/sm90_common.cuh"

#include <stdexcept>
#include <string>
#include <type_traits>

namespace sctrain::kernels::cuda {
namespace sm90 {
namespace {


constexpr int NWG = 2, BR = 64 * NWG, NT = 128 * NWG, STAGES = 4;
// Keys per block: 128 at d64; 64 at d128, where two S tiles and O must fit in registers.
template <int D>
constexpr int kBC = D == 64 ? 128 : 64;

template <typename T, int D>
__global__ void __launch_bounds__(NT, 1) fwd_kernel(const AttnParams p) {
  constexpr int BC = kBC<D>;
  extern __shared__ unsigned char smem_raw[];
  // 1024-byte alignment for the swizzled tiles.
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + BR * D;           // STAGES stages
  T* sV = sK + STAGES * BC * D;  // STAGES stages

  const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, warp_in_wg = (tid % 128) / 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = blockIdx.x * BR;
  const int len = clamp_len(p.lengths, b, p.N);
  const int64_t o_row = static_cast<int64_t>(p.H) * D;
  T* o = static_cast<T*>(p.o) + (static_cast<int64_t>(b) * p.N) * o_row + static_cast<int64_t>(h) * D;
  const int r0 = q0 + wg * 64 + warp_in_wg * 16 + g, r1 = r0 + 8;

  if (q0 >= len) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int c = n * 8 + 2 * t;
      if (r0 < p.N) *reinterpret_cast<uint32_t*>(o + r0 * o_row + c) = 0u;
      if (r1 < p.N) *reinterpret_cast<uint32_t*>(o + r1 * o_row + c) = 0u;
    }
    return;
  }

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];
  const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(len));
  const float hs = 0.5f * p.scale, hb = 0.5f * bias;
  const int nkb = (len + BC - 1) / BC;

  auto load_kv = [&](int blk) {
    const int kn = blk * BC, st = blk % STAGES;
    load_tile<BC, D, NT>(sK + st * BC * D, k + kn * p.k_stride[1], p.k_stride[1], len - kn, tid);
    load_tile<BC, D, NT>(sV + st * BC * D, v + kn * p.v_stride[1], p.v_stride[1], len - kn, tid);
  };
  load_tile<BR, D, NT>(sQ, q + q0 * p.q_stride[1], p.q_stride[1], len - q0, tid);
  load_kv(0);
  cp_async_commit();
  if (nkb > 1) {
    load_kv(1);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  fence_proxy_async();  // cp.async writes -> tensor-core reads
  __syncthreads();

  // Zeroed by volatile asm so the compiler cannot sink it past the first wgmma (ptxas C7515).
  float acc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) asm volatile("mov.b32 %0, 0;\n" : "=f"(acc[i]));
  const T* sQw = sQ + wg * 64 * 64;  // this warpgroup's 64 rows (in each column half)

  // S = Q K^T (64 x 128 per warpgroup), issued asynchronously.
  auto issue_s = [&](float(&s)[BC / 2], int blk) {
    const T* cK = sK + (blk % STAGES) * BC * D;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int half = kk / 4, koff = (kk % 4) * 16;
      mma_ss<T, BC>(s, desc(sQw + half * BR * 64 + koff, 16, 1024), desc(cK + half * BC * 64 + koff, 16, 1024),
                    kk > 0);
    }
    wgmma_commit();
  };
  // One key block: S_j is in s (issued), S_{j+1} goes to s_next while P_j is computed.
  auto step = [&](int j, float(&s)[BC / 2], float(&s_next)[BC / 2]) {
    if (j + 1 < nkb) {
      cp_async_wait<0>();  // block j+1 landed
      fence_proxy_async();
    }
    // Block j+1 visible; every warpgroup has retired PV_{j-2}, so block j-2's stage is free.
    // PV_{j-1} may still run through the barrier and the next loads.
    __syncthreads();
    if (j + 2 < nkb) {
      load_kv(j + 2);
      cp_async_commit();
    }
    wgmma_wait<0>();  // S_j and PV_{j-1} done (ptxas needs a full wait before reading S_j)
    if (j + 1 < nkb) issue_s(s_next, j + 1);

    const int kbase = j * BC;
    const bool partial = kbase + BC > len;
    uint32_t pf[BC / 16][4];
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) {
      float pv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pv[e] = sigmoid_half_arg(fmaf(s[4 * n + e], hs, hb));
        if (partial && kbase + n * 8 + 2 * t + (e & 1) >= len) pv[e] = 0.f;
      }
      pf[n / 2][(n & 1) * 2 + 0] = Traits<T>::pack(pv[0], pv[1]);
      pf[n / 2][(n & 1) * 2 + 1] = Traits<T>::pack(pv[2], pv[3]);
    }
    // O += P V: k = 16 keys per step (2048 bytes of V), N = D across the column halves.
    const T* cV = sV + (j % STAGES) * BC * D;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) mma_rs_tb<T, D>(acc, pf[kk], desc(cV + kk * 16 * 64, BC * 128, 1024));
    wgmma_commit();
  };

  float sa[BC / 2], sb[BC / 2];
  issue_s(sa, 0);
  for (int j = 0; j < nkb; j += 2) {
    step(j, sa, sb);
    if (j + 1 < nkb) step(j + 1, sb, sa);
  }
  wgmma_wait<0>();

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

template <typename T, int D>
void launch(const AttnParams& p, cudaStream_t stream) {
  constexpr int BC = kBC<D>;
  const size_t smem = static_cast<size_t>(BR + 2 * STAGES * BC) * D * sizeof(T) + 1024;
  auto kernel = fwd_kernel<T, D>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  dim3 grid((p.N + BR - 1) / BR, p.H, p.B);
  kernel<<<grid, NT, smem, stream>>>(p);
}

}  // namespace
}  // namespace sm90

void forward_sm90(const AttnParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.N == 0 || p.H == 0) return;
  const bool bf = p.dtype == DType::BF16;
  if (p.D == 64)
    bf ? sm90::launch<__nv_bfloat16, 64>(p, stream) : sm90::launch<__half, 64>(p, stream);
  else if (p.D == 128)
    bf ? sm90::launch<__nv_bfloat16, 128>(p, stream) : sm90::launch<__half, 128>(p, stream);
  else
    throw std::invalid_argument("sigmoid attention kernel: head dim must be 64 or 128");
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("sigmoid attention forward (sm90) launch: ") + cudaGetErrorString(err));
}

}  // namespace sctrain::kernels::cuda
