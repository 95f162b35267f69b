// Device helpers for the portable (sm_80+, mma.sync) sigmoid-attention kernels.
// Shared-memory tiles are row-major with D (or 64) elements per row; 16-byte chunks are
// XOR-swizzled by the row's low 3 bits so ldmatrix and cp.async are free of bank conflicts.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sctrain::kernels::cuda::sm80 {

template <typename T>
struct Traits;
template <>
struct Traits<__nv_bfloat16> {
  __device__ static uint32_t pack(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <>
struct Traits<__half> {
  __device__ static uint32_t pack(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// D[16x8] += A[16x16] B[16x8], fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                   uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16-byte async copy; src_bytes == 0 fills the destination with zeros.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Element offset of (row, col) in a tile with W elements per row (W = 32 or a multiple of 64).
template <int W>
__device__ __forceinline__ int swz(int row, int col) {
  if constexpr (W == 32)  // two rows per 128-byte line
    return row * W + ((((col >> 3) ^ ((row >> 1) & 3))) << 3) + (col & 7);
  else
    return row * W + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// p[0] += a, p[1] += b (one vector atomic on sm_90; p 8-byte aligned).
__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Copies ROWS x W elements from global (row stride in elements) into a swizzled tile;
// rows >= valid are zero-filled and never read from global memory.
template <int ROWS, int W, int NT, typename T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t row_stride, int valid, int tid) {
  constexpr int CH = W / 8;
  static_assert((ROWS * CH) % NT == 0, "tile chunks must divide among threads");
#pragma unroll
  for (int i = 0; i < ROWS * CH / NT; ++i) {
    const int idx = tid + i * NT;
    const int r = idx / CH, c = (idx % CH) * 8;
    const bool ok = r < valid;
    const T* src = ok ? g + r * row_stride + c : g;
    cp_async16(smem_addr(s + swz<W>(r, c)), src, ok ? 16 : 0);
  }
}

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// sigmoid(2h) = 0.5 + 0.5 tanh(h): one special-function instruction.
__device__ __forceinline__ float sigmoid_half_arg(float h) { return fmaf(0.5f, tanh_approx(h), 0.5f); }

__device__ __forceinline__ int clamp_len(const int32_t* lengths, int b, int n) {
  const int l = lengths[b];
  return l < 0 ? 0 : (l > n ? n : l);
}

}  // namespace sctrain::kernels::cuda::sm80
