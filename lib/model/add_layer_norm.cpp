// model::add_layer_norm: the residual add and the LayerNorm after it, fused on the CUDA bf16
// path (kernels/add_layer_norm.cu), the separate LibTorch ops elsewhere.
#include <torch/torch.h>

#include <array>
#include <atomic>
#include <cstdint>

#include "model/model.h"

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/add_layer_norm.h"
#endif

namespace sctrain::model {

namespace {
std::atomic<bool> g_fused{true};

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
namespace kc = kernels::cuda;

bool aligned16(const torch::Tensor& t) {
  return !t.is_contiguous() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

kc::NormType norm_type(const torch::Tensor& t) {
  if (!t.defined()) return kc::NormType::None;
  return t.scalar_type() == at::kBFloat16 ? kc::NormType::BF16 : kc::NormType::F32;
}

// x = r + h + hb (r itself when h is undefined; hb: an empty tensor when there is none) and y = LN(x)
// in bf16 (bf16_out) or float32, for the two autograd functions below (LibTorch's custom functions
// take no undefined inputs).
torch::autograd::variable_list add_ln_forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& r_in,
                                              const torch::Tensor& h_in, const torch::Tensor& hb,
                                              const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                                              bool bf16_out) {
  const c10::cuda::CUDAGuard guard(r_in.device());
  const auto r = r_in.contiguous();
  const auto h = h_in.defined() ? h_in.contiguous() : h_in;
  const int64_t d = r.size(-1), rows = r.numel() / d;
  const auto f32 = r.options().dtype(at::kFloat);
  auto x = h.defined() ? at::empty_like(r) : r;
  auto y = at::empty(r.sizes(), r.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
  auto mean = at::empty({rows}, f32), rstd = at::empty({rows}, f32);
  kc::AddLayerNormForward p{};
  p.r = r.data_ptr<float>();
  p.h = h.defined() ? h.data_ptr() : nullptr;
  p.h_type = norm_type(h);
  p.h_bias = hb.defined() && hb.numel() > 0 ? hb.data_ptr<float>() : nullptr;
  p.gamma = gamma.data_ptr<float>();
  p.beta = beta.data_ptr<float>();
  p.x = h.defined() ? x.data_ptr<float>() : nullptr;
  p.y = y.data_ptr();
  p.y_type = bf16_out ? kc::NormType::BF16 : kc::NormType::F32;
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.rows = rows;
  p.d = static_cast<int>(d);
  p.eps = static_cast<float>(eps);
  kc::add_layer_norm_forward(p, c10::cuda::getCurrentCUDAStream().stream());
  ctx->save_for_backward({x, gamma, mean, rstd});
  ctx->saved_data["h_type"] = static_cast<int64_t>(p.h_type);
  return {x, y};
}

// Gradients of r, h (undefined when h_type is None or h needs none), gamma, beta and hb (undefined
// unless hb_needs_grad): hb's is the column sums of x's.
std::array<torch::Tensor, 5> add_ln_backward(torch::autograd::AutogradContext* ctx,
                                             const torch::autograd::variable_list& grads, bool h_needs_grad,
                                             bool hb_needs_grad) {
  auto saved = ctx->get_saved_variables();
  const auto &x = saved[0], &gamma = saved[1], &mean = saved[2], &rstd = saved[3];
  const auto h_type = static_cast<kc::NormType>(ctx->saved_data["h_type"].toInt());
  const bool want_h = h_type != kc::NormType::None && h_needs_grad;
  const c10::cuda::CUDAGuard guard(x.device());
  auto dx_next = grads[0], dy = grads[1];
  if (!dy.defined()) {  // only x was used
    auto dx = dx_next.defined() ? dx_next : at::zeros_like(x);
    torch::Tensor dh;
    if (want_h) dh = h_type == kc::NormType::BF16 ? dx.to(at::kBFloat16) : dx;
    torch::Tensor dhb;
    if (hb_needs_grad) dhb = dx.reshape({-1, x.size(-1)}).sum(0);
    return {dx, dh, torch::Tensor(), torch::Tensor(), dhb};
  }
  dy = dy.contiguous();
  if (dx_next.defined()) dx_next = dx_next.to(at::kFloat).contiguous();
  const int64_t d = x.size(-1), rows = x.numel() / d;
  const auto f32 = x.options().dtype(at::kFloat);
  auto dx = at::empty_like(x);
  torch::Tensor dx_bf16;
  if (want_h && h_type == kc::NormType::BF16) dx_bf16 = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const int grid = kc::add_layer_norm_backward_grid(rows, static_cast<int>(d), norm_type(dy), hb_needs_grad);
  auto partial = at::empty({hb_needs_grad ? 3 : 2, grid, d}, f32);
  auto dgamma = at::empty({d}, f32), dbeta = at::empty({d}, f32);
  torch::Tensor dhb;
  if (hb_needs_grad) dhb = at::empty({d}, f32);
  kc::AddLayerNormBackward p{};
  p.dy = dy.data_ptr();
  p.dy_type = norm_type(dy);
  p.x = x.data_ptr<float>();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.gamma = gamma.data_ptr<float>();
  p.dx_next = dx_next.defined() ? dx_next.data_ptr<float>() : nullptr;
  p.dx = dx.data_ptr<float>();
  p.dx_bf16 = dx_bf16.defined() ? dx_bf16.data_ptr() : nullptr;
  p.partial = partial.data_ptr<float>();
  p.dgamma = dgamma.data_ptr<float>();
  p.dbeta = dbeta.data_ptr<float>();
  p.dh_bias = hb_needs_grad ? dhb.data_ptr<float>() : nullptr;
  p.rows = rows;
  p.d = static_cast<int>(d);
  kc::add_layer_norm_backward(p, c10::cuda::getCurrentCUDAStream().stream());
  torch::Tensor dh;
  if (want_h) dh = h_type == kc::NormType::BF16 ? dx_bf16 : dx;
  return {dx, dh, dgamma.view(gamma.sizes()), dbeta.view(gamma.sizes()), dhb};
}

// With a branch output h and its bias hb (an empty tensor, which needs no gradient, when none): outputs
// x = r + h + hb, y = LN(x).
struct AddLayerNormFn : public torch::autograd::Function<AddLayerNormFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& r,
                                                const torch::Tensor& h, const torch::Tensor& hb,
                                                const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                                                bool bf16_out) {
    return add_ln_forward(ctx, r, h, hb, gamma, beta, eps, bf16_out);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto g = add_ln_backward(ctx, grads, ctx->needs_input_grad(1), ctx->needs_input_grad(2));
    return {g[0], g[1], g[4], g[2], g[3], torch::Tensor(), torch::Tensor()};
  }
};

// Without one: outputs x = r (as a new node's output, so that x's own gradient reaches this
// node and is added in its kernel), y = LN(r).
struct ResidualLayerNormFn : public torch::autograd::Function<ResidualLayerNormFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& r,
                                                const torch::Tensor& gamma, const torch::Tensor& beta, double eps,
                                                bool bf16_out) {
    return add_ln_forward(ctx, r, torch::Tensor(), torch::Tensor(), gamma, beta, eps, bf16_out);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto g = add_ln_backward(ctx, grads, false, false);
    return {g[0], g[2], g[3], torch::Tensor(), torch::Tensor()};
  }
};
#endif

}  // namespace

void set_fused_add_layer_norm(bool on) { g_fused.store(on); }

bool fused_add_norm_path(const torch::Tensor& r, const torch::Tensor& h, const torch::nn::LayerNorm& ln) {
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  if (!g_fused.load(std::memory_order_relaxed) || !r.defined() || r.dim() < 1 || r.scalar_type() != at::kFloat ||
      !bf16_norm_path(r))
    return false;
  const auto& o = ln->options;
  const int64_t d = r.size(-1);
  if (!o.elementwise_affine() || o.normalized_shape().size() != 1 || o.normalized_shape()[0] != d || d % 8 != 0 ||
      d > kc::add_layer_norm_max_dim() || r.numel() == 0)
    return false;
  if (ln->weight.scalar_type() != at::kFloat || ln->bias.scalar_type() != at::kFloat ||
      ln->weight.device() != r.device() || !aligned16(ln->weight) || !aligned16(ln->bias) || !aligned16(r))
    return false;
  if (h.defined() && (h.sizes() != r.sizes() || h.device() != r.device() || !aligned16(h) ||
                      (h.scalar_type() != at::kBFloat16 && h.scalar_type() != at::kFloat)))
    return false;
  return true;
#else
  (void)r;
  (void)h;
  (void)ln;
  return false;
#endif
}

AddNorm add_layer_norm(const torch::Tensor& r, const torch::Tensor& h, torch::nn::LayerNorm& ln, bool for_gemm,
                       const torch::Tensor& hb) {
  TORCH_CHECK(!hb.defined() || h.defined(), "add_layer_norm: a branch bias without the branch output");
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  const bool hb_fits = !hb.defined() || (hb.scalar_type() == at::kFloat && hb.dim() == 1 && hb.size(0) == r.size(-1) &&
                                         hb.device() == r.device() && hb.is_contiguous() && aligned16(hb));
  if (hb_fits && fused_add_norm_path(r, h, ln)) {
    const double eps = ln->options.eps();
    auto out = h.defined() ? AddLayerNormFn::apply(r, h, hb.defined() ? hb : at::empty({0}, r.options()), ln->weight,
                                                   ln->bias, eps, for_gemm)
                           : ResidualLayerNormFn::apply(r, ln->weight, ln->bias, eps, for_gemm);
    return {out[0], out[1]};
  }
#endif
  auto x = Residual{r, h, hb}.sum();
  if (!for_gemm) return {x, ln(x)};
  if (x.scalar_type() == at::kFloat && bf16_norm_path(x) && split_norm_input()) {
    // The residual stream stays float32; the norm reads its bf16 copy.
    auto [x1, b1] = split_for_bf16_norm(x);
    return {x1, layer_norm_for_gemm(ln, b1)};
  }
  return {x, layer_norm_for_gemm(ln, x)};
}

}  // namespace sctrain::model
