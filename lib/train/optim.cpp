#include "train/optim.h"

#include <torch/torch.h>

#include <atomic>
#include <cmath>

#include "util/log.h"

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/adamw.h"
#include "model/model.h"
#endif

namespace sctrain::train {

namespace {
std::atomic<bool> g_writes_casts{true};

// Step counts advance by `advance` (1 - found_inf, on the device: no host sync), else by 1.
void advance_steps(std::vector<torch::Tensor>& steps, const torch::Tensor& advance) {
  if (advance.defined()) at::_foreach_add_(steps, advance);
  else at::_foreach_add_(steps, 1.0);
}
}  // namespace

void set_adamw_writes_casts(bool on) { g_writes_casts.store(on); }

AdamW::AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& named_params, AdamWOptions opts)
    : opts_(opts) {
  torch::NoGradGuard g;
  for (const auto& [name, p] : named_params) {
    Slot s;
    s.name = name;
    s.param = p;
    s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Contiguous);
    s.step = torch::zeros({}, p.options().dtype(torch::kFloat));
    s.decay = p.dim() >= 2;
    slots_.push_back(std::move(s));
  }
}

int64_t AdamW::n_decay() const {
  int64_t n = 0;
  for (const auto& s : slots_) n += s.decay;
  return n;
}

void AdamW::zero_grad() {
  for (auto& s : slots_) s.param.mutable_grad().reset();
}

bool AdamW::step_cuda(double lr, const std::optional<torch::Tensor>& grad_scale,
                      const std::optional<torch::Tensor>& found_inf, const torch::Tensor& advance) {
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  if (!g_writes_casts.load(std::memory_order_relaxed)) return false;
  std::vector<Slot*> live;
  for (auto& s : slots_) {
    const auto& p = s.param;
    const auto& gr = p.grad();
    if (!gr.defined()) continue;
    if (!p.is_cuda() || p.scalar_type() != torch::kFloat || !p.is_contiguous() || gr.scalar_type() != torch::kFloat ||
        !gr.is_contiguous() || gr.sizes() != p.sizes() || p.device() != gr.device() ||
        (!live.empty() && p.device() != live[0]->param.device()))
      return false;
    live.push_back(&s);
  }
  if (live.empty()) return true;
  const c10::cuda::CUDAGuard guard(live[0]->param.device());
  std::vector<torch::Tensor> steps;
  for (auto* s : live) steps.push_back(s->step);
  advance_steps(steps, advance);
  std::vector<kernels::cuda::AdamWTensor> ts;
  std::vector<torch::Tensor> copies;
  for (auto* s : live) {
    auto copy = model::kept_weight_cast(s->param);
    ts.push_back({s->param.data_ptr<float>(), s->param.grad().data_ptr<float>(), s->exp_avg.data_ptr<float>(),
                  s->exp_avg_sq.data_ptr<float>(), s->step.data_ptr<float>(), copy.defined() ? copy.data_ptr() : nullptr,
                  s->param.numel(), static_cast<float>(s->decay ? opts_.weight_decay : 0.0)});
    copies.push_back(std::move(copy));
  }
  const torch::Tensor scale = grad_scale ? grad_scale->to(torch::kFloat).contiguous() : torch::Tensor();
  const torch::Tensor inf = found_inf ? found_inf->to(torch::kFloat).contiguous() : torch::Tensor();
  kernels::cuda::AdamWHyper h{lr, opts_.beta1, opts_.beta2, opts_.eps,
                              scale.defined() ? scale.data_ptr<float>() : nullptr,
                              inf.defined() ? inf.data_ptr<float>() : nullptr};
  kernels::cuda::adamw_multi_tensor(ts, h, c10::cuda::getCurrentCUDAStream().stream());
  for (size_t i = 0; i < live.size(); ++i) {
    live[i]->param.unsafeGetTensorImpl()->bump_version();  // an in-place update, as any other
    if (copies[i].defined()) model::weight_cast_written(live[i]->param);
  }
  return true;
#else
  (void)lr;
  (void)grad_scale;
  (void)found_inf;
  (void)advance;
  return false;
#endif
}

void AdamW::step(double lr, const std::optional<torch::Tensor>& grad_scale,
                 const std::optional<torch::Tensor>& found_inf) {
  torch::NoGradGuard g;
  torch::Tensor advance;  // no advance on a skipped step
  if (found_inf) advance = 1.0 - *found_inf;
  if (step_cuda(lr, grad_scale, found_inf, advance)) return;
  for (int decay = 0; decay < 2; ++decay) {
    std::vector<torch::Tensor> p, gr, m, v, st;
    for (auto& s : slots_) {
      if (s.decay != static_cast<bool>(decay) || !s.param.grad().defined()) continue;
      p.push_back(s.param);
      gr.push_back(s.param.grad());
      m.push_back(s.exp_avg);
      v.push_back(s.exp_avg_sq);
      st.push_back(s.step);
    }
    if (p.empty()) continue;
    const double wd = decay ? opts_.weight_decay : 0.0;
    advance_steps(st, advance);
    if (fused_) {
      try {
        at::_fused_adamw_(p, gr, m, v, {}, st, lr, opts_.beta1, opts_.beta2, wd, opts_.eps,
                          /*amsgrad=*/false, /*maximize=*/false, grad_scale, found_inf);
        // The fused op leaves the version counters as they were; bump them, as any in-place update
        // does, so that what keys on them (the GEMMs' kept bf16 weight copies) sees the change.
        for (auto& t : p) t.unsafeGetTensorImpl()->bump_version();
        continue;
      } catch (const c10::Error& e) {
        log::warn(str("fused AdamW unavailable (", e.what_without_backtrace(),
                      "): using the per-tensor form"));
        fused_ = false;
      }
    }
    if (found_inf && found_inf->item<float>() != 0.0f) continue;
    for (size_t i = 0; i < p.size(); ++i) {
      if (grad_scale) gr[i].div_(*grad_scale);
      const double t = st[i].item<double>();
      p[i].mul_(1.0 - lr * wd);
      m[i].lerp_(gr[i], 1.0 - opts_.beta1);
      v[i].mul_(opts_.beta2).addcmul_(gr[i], gr[i], 1.0 - opts_.beta2);
      const double bc1 = 1.0 - std::pow(opts_.beta1, t), bc2 = 1.0 - std::pow(opts_.beta2, t);
      auto denom = (v[i].sqrt() / std::sqrt(bc2)).add_(opts_.eps);
      p[i].addcdiv_(m[i], denom, -lr / bc1);
    }
  }
}

void AdamW::save(torch::serialize::OutputArchive& ar) const {
  for (const auto& s : slots_) {
    ar.write("adamw." + s.name + ".exp_avg", s.exp_avg);
    ar.write("adamw." + s.name + ".exp_avg_sq", s.exp_avg_sq);
    ar.write("adamw." + s.name + ".step", s.step);
  }
}

void AdamW::load(torch::serialize::InputArchive& ar) {
  torch::NoGradGuard g;
  for (auto& s : slots_) {
    torch::Tensor t;
    ar.read("adamw." + s.name + ".exp_avg", t);
    s.exp_avg.copy_(t);
    ar.read("adamw." + s.name + ".exp_avg_sq", t);
    s.exp_avg_sq.copy_(t);
    ar.read("adamw." + s.name + ".step", t);
    s.step.copy_(t);
  }
}

}  // namespace sctrain::train
