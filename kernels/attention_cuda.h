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
  void* dk;
  void* dv;
  int64_t dkv_stride[3];
};

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
