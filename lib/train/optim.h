// AdamW over flat parameter lists, with the learning rate given per step (the schedule
// lives outside). Weight decay applies to matrices (dim >= 2) only: not to biases,
// LayerNorm weights, LayerScale gammas. On CUDA, float32 weights go through our multi-tensor
// kernel (kernels/adamw.h), which also writes the GEMMs' kept bf16 weight copies
// (model::kept_weight_cast), so the next forward recasts nothing; elsewhere ATen's fused AdamW
// (at::_fused_adamw_, one kernel per group); the plain per-tensor form is the last fallback.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace torch::serialize {
class InputArchive;
class OutputArchive;
}  // namespace torch::serialize

namespace sctrain::train {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.98, eps = 1e-8, weight_decay = 0.01;
};

// Off: ATen's fused AdamW on CUDA too, the kept copies recast before the next forward (A/B, tests).
void set_adamw_writes_casts(bool on);

class AdamW {
 public:
  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& named_params, AdamWOptions opts);
  // Parameters without a gradient are left alone. Optional device scalars (float32), as
  // ATen's fused AdamW takes them, so that the host need not read anything first:
  //   grad_scale: the gradients are divided by it first (ATen's path also stores them so): clipping;
  //   found_inf: 1 skips the whole update (weights, moments and step counts unchanged).
  void step(double lr, const std::optional<torch::Tensor>& grad_scale = std::nullopt,
            const std::optional<torch::Tensor>& found_inf = std::nullopt);
  void zero_grad();      // gradients set to none
  void save(torch::serialize::OutputArchive& ar) const;
  void load(torch::serialize::InputArchive& ar);
  int64_t n_decay() const;  // parameters that get weight decay

 private:
  struct Slot {
    std::string name;
    torch::Tensor param, exp_avg, exp_avg_sq, step;  // step: float32 scalar on the device
    bool decay = true;
  };
  // Our CUDA kernel, when every slot with a gradient is a contiguous float32 CUDA tensor; false
  // when it cannot take them (then ATen's path runs).
  bool step_cuda(double lr, const std::optional<torch::Tensor>& grad_scale,
                 const std::optional<torch::Tensor>& found_inf, const torch::Tensor& advance);
  std::vector<Slot> slots_;
  AdamWOptions opts_;
  bool fused_ = true;
};

}  // namespace sctrain::train
