// Hopper (sm_90a) loads: mbarriers, TMA (bulk tensor copies) of swizzled tiles, and the host-side
// tensor maps of [B, N, H, D] views (the strides of the fused QKV projection).
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention_cuda.h"
#include "kernels/sm80_common.cuh"

namespace sctrain::kernels::cuda::sm90 {

using sm80::smem_addr;

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives when all of this thread's earlier cp.async have landed (counts as one of the expected arrivals).
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// Fetches a tensor map (a kernel parameter) into the TMA unit's cache ahead of its first use.
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// TMA (bulk tensor copy) of one 64-column half: box {64 columns, 1 head, ROWS rows, 1 batch} of a
// [B, N, H, D] view, 128-byte swizzle (the tile layout of sm90_common.cuh), completing bytes on an mbarrier.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, int c, int h, int row, int b,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c), "r"(h), "r"(row), "r"(b), "r"(bar)
      : "memory");
}
// TMA store of one 64-column half from shared memory (same box and swizzle as the loads), in the
// thread's bulk group; tma_store_wait waits until its shared-memory reads are done.
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, uint32_t src, int c, int h, int row, int b) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n"
               ::"l"(reinterpret_cast<uint64_t>(map)), "r"(src), "r"(c), "r"(h), "r"(row), "r"(b)
               : "memory");
}
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void tma_store_wait() {
  asm volatile("cp.async.bulk.commit_group;\ncp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
template <int ROWS, int D, typename T>
__device__ __forceinline__ void tma_tile(T* s, const CUtensorMap* map, int h, int row, int b, uint32_t bar) {
#pragma unroll
  for (int half = 0; half < D / 64; ++half) tma_load_4d(smem_addr(s + half * ROWS * 64), map, half * 64, h, row, b, bar);
}

// Tensor map of a [B, N, H, D] view with element strides (batch, seq, head): boxes of 64 columns x rows.
// False when the driver has no cuTensorMapEncodeTiled or the view does not qualify.
template <typename T, int D>
bool encode_tile_map(CUtensorMap* map, const void* base, const int64_t (&st)[3], const AttnParams& p, int rows) {
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static const Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return Encode{nullptr};
    return reinterpret_cast<Encode>(fn);
  }();
  if (encode == nullptr) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(p.H), static_cast<cuuint64_t>(p.N),
                              static_cast<cuuint64_t>(p.B)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(st[2]) * sizeof(T), static_cast<cuuint64_t>(st[1]) * sizeof(T),
                                 static_cast<cuuint64_t>(st[0]) * sizeof(T)};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(rows), 1}, unit[4] = {1, 1, 1, 1};
  return encode(map, std::is_same_v<T, __nv_bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
                const_cast<void*>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace sctrain::kernels::cuda::sm90
