// Helpers of the Hopper (sm_90a) kernels: swizzled tiles, wgmma descriptors and wrappers.
// Shared tile layout: column halves of 64 elements, each [rows][64] with 16-byte chunks
// XOR-swizzled by (row & 7): the canonical 128-byte-swizzle layout of wgmma (tiles 1024-byte aligned).
#pragma once
#include <type_traits>
#include <utility>

#include "kernels/sm80_common.cuh"
#include "kernels/sm90_wgmma.cuh"

namespace sctrain::kernels::cuda::sm90 {

using sm80::clamp_len;
using sm80::cp_async16;
using sm80::cp_async_commit;
using sm80::cp_async_wait;
using sm80::sigmoid_half_arg;
using sm80::smem_addr;
using sm80::tanh_approx;
using sm80::Traits;

// threadIdx.x / 128, broadcast from lane 0 so that ptxas knows it is warp-uniform: the shared memory
// descriptor arithmetic that depends on it then stays in uniform registers (no R2UR per wgmma).
__device__ __forceinline__ int warpgroup_index() { return __shfl_sync(0xffffffffu, threadIdx.x / 128, 0); }

// Element offset of (row, col) in a ROWS x D tile stored as D/64 swizzled column halves.
template <int ROWS>
__device__ __forceinline__ int tile_off(int row, int col) {
  return (col >> 6) * ROWS * 64 + row * 64 + ((((col >> 3) & 7) ^ (row & 7)) << 3) + (col & 7);
}

template <int ROWS, int D, int NT, typename T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t row_stride, int valid, int tid) {
  constexpr int CH = D / 8;
  static_assert((ROWS * CH) % NT == 0, "tile chunks must divide among threads");
#pragma unroll
  for (int i = 0; i < ROWS * CH / NT; ++i) {
    const int idx = tid + i * NT;
    const int r = idx / CH, c = (idx % CH) * 8;
    const bool ok = r < valid;
    cp_async16(smem_addr(s + tile_off<ROWS>(r, c)), ok ? g + r * row_stride + c : g, ok ? 16 : 0);
  }
}

// Shared-memory matrix descriptor, 128-byte swizzle.
__device__ __forceinline__ uint64_t desc(const void* p, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  const uint32_t a = smem_addr(p);
  return static_cast<uint64_t>((a & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo_bytes >> 4) << 16) |
         (static_cast<uint64_t>(sbo_bytes >> 4) << 32) | (1ull << 62);
}

// The descriptor of (base's address) + elems elements of T: only the start-address field moves (a CTA's
// shared addresses fit it, so nothing carries out), so in an unrolled loop this is one add per wgmma
// instead of rebuilding the descriptor from a pointer.
template <typename T>
__device__ __forceinline__ uint64_t desc_at(uint64_t base, int elems) {
  const uint32_t lo = static_cast<uint32_t>(base) + static_cast<uint32_t>(elems * static_cast<int>(sizeof(T))) / 16;
  return (base & 0xFFFFFFFF00000000ull) | lo;
}

template <typename T, int N>
__device__ __forceinline__ void mma_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if constexpr (N == 64) wgmma_ss_bf16_n64(d, da, db, scale_d);
    else wgmma_ss_bf16_n128(d, da, db, scale_d);
  } else {
    if constexpr (N == 64) wgmma_ss_f16_n64(d, da, db, scale_d);
    else wgmma_ss_f16_n128(d, da, db, scale_d);
  }
}
template <typename T, int N>
__device__ __forceinline__ void mma_rs_tb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if constexpr (N == 64) wgmma_rs_bf16_n64_tb(d, a, db);
    else wgmma_rs_bf16_n128_tb(d, a, db);
  } else {
    if constexpr (N == 64) wgmma_rs_f16_n64_tb(d, a, db);
    else wgmma_rs_f16_n128_tb(d, a, db);
  }
}


// A and B transposed (MN-major), N = 32 or 64.
template <typename T, int N>
__device__ __forceinline__ void mma_ss_tt(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if constexpr (N == 32) wgmma_ss_bf16_n32_tt(d, da, db, scale_d);
    else wgmma_ss_bf16_n64_tt(d, da, db, scale_d);
  } else {
    if constexpr (N == 32) wgmma_ss_f16_n32_tt(d, da, db, scale_d);
    else wgmma_ss_f16_n64_tt(d, da, db, scale_d);
  }
}

// Stores four 8x8 b16 matrices (one instruction per warp): lane i gives the shared address of row i % 8
// of matrix i / 8; register j holds this thread's pair of matrix j in the mma fragment layout (row
// lane / 4, columns 2 (lane % 4) and + 1).
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// Adds an m64n64 accumulator (this thread: warp wi of the warpgroup, lane) to a 4096-float chunk of the
// tiled dQ layout (attention_cuda.h) with 16-byte atomics: a warp's 32 cover 512 contiguous bytes.
template <int OFF>
__device__ __forceinline__ void red_add_v4(float* a, float x, float y, float z, float w) {
  asm volatile("red.relaxed.gpu.global.add.v4.f32 [%0+%5], {%1, %2, %3, %4};\n" ::"l"(a), "f"(x), "f"(y), "f"(z),
               "f"(w), "n"(OFF)
               : "memory");
}
// (Inline PTX: one address register and immediate offsets; atomicAdd(float4*) took eight, and spilled 52
// bytes at d64.)
template <int... N>
__device__ __forceinline__ void atomic_add_chunk(float* g, const float (&d)[32], int wi, int lane,
                                                 std::integer_sequence<int, N...>) {
  float* a = g + (wi * 8 * 32 + lane) * 4;
  (red_add_v4<N * 512>(a, d[4 * N], d[4 * N + 1], d[4 * N + 2], d[4 * N + 3]), ...);
}
__device__ __forceinline__ void atomic_add_chunk(float* g, const float (&d)[32], int wi, int lane) {
  atomic_add_chunk(g, d, wi, lane, std::make_integer_sequence<int, 8>{});
}

}  // namespace sctrain::kernels::cuda::sm90
