// model::mean_cross_entropy: the masked-token loss, one kernel each way for CUDA bf16 logits.
#include <torch/torch.h>

#include <atomic>

#include "model/model.h"

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cross_entropy.h"
#endif

namespace sctrain::model {

namespace {
std::atomic<bool> g_fused{true};

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
struct CrossEntropyBf16 : public torch::autograd::Function<CrossEntropyBf16> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits_in,
                               const torch::Tensor& targets_in) {
    const c10::cuda::CUDAGuard guard(logits_in.device());
    const auto logits = logits_in.contiguous();
    const auto targets = targets_in.to(logits.device(), torch::kLong).contiguous();
    const int64_t rows = logits.size(0);
    const auto f32 = logits.options().dtype(torch::kFloat);
    auto lse = torch::empty({rows}, f32), loss = torch::empty({rows}, f32);
    kernels::cuda::cross_entropy_forward_bf16(logits.data_ptr(), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
                                              loss.data_ptr<float>(), rows, static_cast<int>(logits.size(1)),
                                              c10::cuda::getCurrentCUDAStream().stream());
    ctx->save_for_backward({logits, targets, lse});
    return loss.mean();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &targets = saved[1], &lse = saved[2];
    const c10::cuda::CUDAGuard guard(logits.device());
    const auto dloss = grads[0].to(torch::kFloat).contiguous();
    auto dlogits = torch::empty_like(logits);
    const int64_t rows = logits.size(0);
    kernels::cuda::cross_entropy_backward_bf16(logits.data_ptr(), targets.data_ptr<int64_t>(), lse.data_ptr<float>(),
                                               dloss.data_ptr<float>(), 1.0f / static_cast<float>(rows),
                                               dlogits.data_ptr(), rows, static_cast<int>(logits.size(1)),
                                               c10::cuda::getCurrentCUDAStream().stream());
    return {dlogits, torch::Tensor()};
  }
};
#endif

}  // namespace

void set_fused_cross_entropy(bool on) { g_fused.store(on); }

torch::Tensor mean_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  if (g_fused.load(std::memory_order_relaxed) && logits.is_cuda() && logits.scalar_type() == torch::kBFloat16 &&
      logits.dim() == 2 && logits.size(0) > 0 && logits.size(1) > 0 && logits.size(1) <= (int64_t{1} << 30) &&
      targets.dim() == 1 && targets.size(0) == logits.size(0))
    return CrossEntropyBf16::apply(logits, targets);
#endif
  return torch::nn::functional::cross_entropy(
      logits.scalar_type() == torch::kDouble ? logits : logits.to(torch::kFloat), targets);
}

}  // namespace sctrain::model
