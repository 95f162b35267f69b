// Launchers of the CUDA sigmoid-attention kernels (internal; no LibTorch in here).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sctrain::kernels::cuda {

enum class DType { BF16, F16 };

struct AttnParams {
  // Inputs [B, N, H, D] with unit last stride; strides in elements (batch, seq, head).
  const void* q;
  const void* k;
  const void* v;
  int64_t q_stride[3], k_stride[3], v_stride[3];
  const int32_t* lengths;  // [B] on the device
  int B, N, H, D;
  float scale;
  float bias;     // used when has_bias
  bool has_bias;  // else bias = -log(length)
  DType dtype;
  // Forward: O contiguous [B, N, H, D].
  void* o;
  // Backward: dO [B, N, H, D] strided; dQ accumulated in fp32 (contiguous, zeroed by the caller);
  // dK, dV [B, N, H, D] in the input dtype with strides dkv_stride (unit last stride; e.g. slices of
  // one packed [B, N, 3, H, D] gradient).
  const void* dout;
  int64_t do_stride[3];
  float* dq_accum;
  bool dq_tiled;  // dq_accum's layout: false [B, N, H, D]; true tiled (below), the Hopper path's
  void* dk;
  void* dv;
  int64_t dkv_stride[3];
};

// Tiled dQ accumulator: per (batch, head), dq_tiled_rows(N) rows in blocks of 64; each block D/64 chunks of
// 64 rows x 64 columns, 4096 floats in wgmma accumulator order: float4 number (w * 8 + n) * 32 + lane holds
// rows w*16 + lane/4 (x, y) and + 8 (z, w), columns n*8 + 2 (lane % 4) and + 1. A warpgroup's m64n64
// accumulator is one contiguous chunk (one bulk reduction, or coalesced 16-byte atomics). It holds
// dQ / hopper_ds_factor(p): the Hopper backward keeps dS without that factor (its epilogue applies it to
// dK, the dQ conversion to dQ).
__host__ __device__ inline int64_t dq_tiled_rows(int N) { return (static_cast<int64_t>(N) + 127) / 128 * 128; }
// scale / 4: with U = tanh(x / 2), dS = scale dP P (1 - P) = (scale / 4) dP (1 - U^2).
__host__ __device__ inline float hopper_ds_factor(const AttnParams& p) { return 0.25f * p.scale; }
inline int64_t dq_accum_numel(const AttnParams& p) {
  return static_cast<int64_t>(p.B) * p.H * p.D * (p.dq_tiled ? dq_tiled_rows(p.N) : p.N);
}

// Compute capability major*10+minor of the current device (cached per device).
int device_sm();

void forward_sm80(const AttnParams& p, cudaStream_t stream);
void backward_sm80(const AttnParams& p, cudaStream_t stream);
// Hopper (sm_90a) only. False, launching nothing, when the driver cannot describe the tensors for TMA
// (no cuTensorMapEncodeTiled): the caller then uses the portable path.
bool forward_sm90(const AttnParams& p, cudaStream_t stream);
bool backward_sm90(const AttnParams& p, cudaStream_t stream);
// After a backward: dQ = p.dq_accum in p's dtype into dq, [B, N, H, D] with strides dq_stride (unit last
// stride, 16-byte aligned rows).
void convert_dq(const AttnParams& p, void* dq, const int64_t (&dq_stride)[3], cudaStream_t stream);

}  // namespace sctrain::kernels::cuda
