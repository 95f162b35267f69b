#include <torch/torch.h>

#include <cmath>

#include "kernels/attention.h"

namespace sctrain::kernels {

torch::Tensor sigmoid_attention_reference(const torch::Tensor& q, const torch::Tensor& k,
                                          const torch::Tensor& v, const torch::Tensor& lengths,
                                          const SigmoidAttentionOptions& opts) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "sigmoid_attention: q, k, v must be [B, N, H, D] of one shape");
  const int64_t B = q.size(0), N = q.size(1), D = q.size(3);
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, "sigmoid_attention: lengths must be [B]");
  const double scale = opts.scale.value_or(1.0 / std::sqrt(static_cast<double>(D)));

  // Computes in float32, or float64 for float64 inputs (the precision tests compare against).
  const auto acc = q.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  auto qh = q.transpose(1, 2), kh = k.transpose(1, 2), vh = v.transpose(1, 2);  // [B, H, N, D]
  auto len = lengths.to(q.device(), torch::kLong);
  auto pos = torch::arange(N, len.options());
  auto valid = pos.unsqueeze(0) < len.unsqueeze(1);                              // [B, N]
  torch::Tensor bias;
  if (opts.bias) {
    bias = torch::full({B}, *opts.bias, q.options().dtype(acc));
  } else {
    bias = -torch::log(len.clamp_min(1).to(acc));
  }
  auto s = torch::matmul(qh.to(acc), kh.to(acc).transpose(-1, -2)) * scale + bias.view({B, 1, 1, 1});
  auto p = torch::sigmoid(s) * valid.view({B, 1, 1, N}).to(acc);
  auto o = torch::matmul(p, vh.to(acc));                                          // [B, H, N, D]
  o = o * valid.view({B, 1, N, 1}).to(acc);
  return o.transpose(1, 2).contiguous().to(q.scalar_type());
}

}  // namespace sctrain::kernels
