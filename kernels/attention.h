// Sigmoid attention: O = sigmoid(Q K^T * scale + bias) V over right-padded sequences.
//
// Layout: q, k, v are [B, N, H, D] (any strides with a unit last stride, e.g. views
// into a fused QKV projection [B, N, 3, H, D]); the output is a contiguous [B, N, H, D].
// lengths: int32 [B] on the same device, the unpadded length of each sequence.
// Keys at positions >= length get no weight; padded query rows of O are zero.
#pragma once
#include <torch/types.h>

#include <optional>

namespace sctrain::kernels {

struct SigmoidAttentionOptions {
  std::optional<double> scale;  // default 1/sqrt(D)
  std::optional<double> bias;   // default -log(length of the sequence)
};

// Differentiable; runs the CUDA kernel when available for the inputs, else the reference.
torch::Tensor sigmoid_attention(const torch::Tensor& q, const torch::Tensor& k,
                                const torch::Tensor& v, const torch::Tensor& lengths,
                                const SigmoidAttentionOptions& opts = {});

// The same on one packed qkv [B, N, 3, H, D] (q, k, v = qkv[:, :, 0 | 1 | 2]), as a fused QKV
// projection produces it; on the CUDA kernel its gradient is one packed tensor (no stack of three).
torch::Tensor sigmoid_attention_packed(const torch::Tensor& qkv, const torch::Tensor& lengths,
                                       const SigmoidAttentionOptions& opts = {});

// The same function in LibTorch operations: runs on any device and dtype (autograd by LibTorch).
torch::Tensor sigmoid_attention_reference(const torch::Tensor& q, const torch::Tensor& k,
                                          const torch::Tensor& v, const torch::Tensor& lengths,
                                          const SigmoidAttentionOptions& opts = {});

// True when the CUDA kernel was built and supports these inputs (device, dtype, head dim).
bool sigmoid_attention_kernel_supports(const torch::Tensor& q);

}  // namespace sctrain::kernels
