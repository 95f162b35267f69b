// The linear layers' GEMM paths: bias in the cuBLASLt epilogue, float32 weight gradients straight from
// the GEMMs under autocast, their bf16 weight copies kept across steps, and the feed-forward's GELU
// fused on the CUDA bf16 path (exact: our kernel after the GEMM; tanh: in cuBLASLt's epilogues of the
// GEMMs on either side).
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "model/model.h"

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/gelu.h"
#include "kernels/gemm_lt.h"
#endif

namespace sctrain::model {

namespace {

struct CastEntry {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> src;
  const void* data;
  int64_t version;
  torch::Tensor copy;
};
std::mutex g_casts_mu;
std::unordered_map<const c10::TensorImpl*, CastEntry> g_casts;
std::atomic<bool> g_cache_casts{true};

bool cacheable(const torch::Tensor& w, at::ScalarType t) {
  return g_cache_casts.load(std::memory_order_relaxed) && w.is_cuda() && w.scalar_type() == at::kFloat &&
         t == at::kBFloat16 && w.is_leaf();
}

// Whether entry e still holds w's current cast (same storage, version and shape).
bool is_current(const CastEntry& e, const torch::Tensor& w) {
  return !e.src.expired() && e.data == w.data_ptr() && e.version == static_cast<int64_t>(w._version()) &&
         e.copy.sizes() == w.sizes();
}

}  // namespace

void set_cached_weight_casts(bool on) {
  g_cache_casts.store(on);
  if (!on) {
    std::lock_guard<std::mutex> lock(g_casts_mu);
    g_casts.clear();
  }
}

torch::Tensor cast_weight(const torch::Tensor& w, at::ScalarType t) {
  if (w.scalar_type() == t) return w;
  if (!cacheable(w, t)) return w.to(t);
  std::lock_guard<std::mutex> lock(g_casts_mu);
  auto it = g_casts.find(w.unsafeGetTensorImpl());
  if (it != g_casts.end() && is_current(it->second, w)) return it->second.copy;
  torch::NoGradGuard no_grad;
  auto copy = w.to(t);
  g_casts.insert_or_assign(w.unsafeGetTensorImpl(),
                          CastEntry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(w.getIntrusivePtr()),
                                    w.data_ptr(), static_cast<int64_t>(w._version()), copy});
  return copy;
}

void refresh_weight_casts() {
  std::lock_guard<std::mutex> lock(g_casts_mu);
  std::vector<torch::Tensor> dst, src;
  std::vector<CastEntry*> stale;
  for (auto it = g_casts.begin(); it != g_casts.end();) {
    auto w = it->second.src.lock();
    if (!w || w->data() != it->second.data || w->sizes() != it->second.copy.sizes() || !w->is_contiguous()) {
      it = g_casts.erase(it);  // gone, or new storage: cast afresh on its next use
      continue;
    }
    if (static_cast<int64_t>(w->version_counter().current_version()) != it->second.version) {
      dst.push_back(it->second.copy);
      src.push_back(torch::Tensor(std::move(w)));
      stale.push_back(&it->second);
    }
    ++it;
  }
  if (dst.empty()) return;
  torch::NoGradGuard no_grad;
  at::_foreach_copy_(dst, src);
  for (size_t i = 0; i < stale.size(); ++i) stale[i]->version = static_cast<int64_t>(src[i]._version());
}

torch::Tensor kept_weight_cast(const torch::Tensor& w) {
  if (!cacheable(w, at::kBFloat16)) return {};
  std::lock_guard<std::mutex> lock(g_casts_mu);
  auto it = g_casts.find(w.unsafeGetTensorImpl());
  if (it == g_casts.end() || !is_current(it->second, w) || !it->second.copy.is_contiguous()) return {};
  return it->second.copy;
}

void weight_cast_written(const torch::Tensor& w) {
  std::lock_guard<std::mutex> lock(g_casts_mu);
  auto it = g_casts.find(w.unsafeGetTensorImpl());
  if (it != g_casts.end()) it->second.version = static_cast<int64_t>(w._version());
}

namespace {

torch::Tensor mm_to(const torch::Tensor& a, const torch::Tensor& m, at::ScalarType out) {
  return out == a.scalar_type() ? a.mm(m) : at::mm(a, m, out);
}

std::atomic<bool> g_lt_epilogues{true};

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
kernels::cuda::LtContext lt_context() {
  return {at::cuda::getCurrentCUDABlasLtHandle(), at::cuda::getCUDABlasLtWorkspace(),
          at::cuda::getCUDABlasLtWorkspaceSize(), at::cuda::getCurrentCUDAStream().stream()};
}

// Whether the cuBLASLt path may take these tensors (gemm_lt.h checks alignment and sizes itself).
bool lt_operands(std::initializer_list<const torch::Tensor*> ts) {
  if (!g_lt_epilogues.load(std::memory_order_relaxed)) return false;
  for (const auto* t : ts)
    if (!t->is_cuda() || t->scalar_type() != at::kBFloat16 || !t->is_contiguous()) return false;
  return true;
}
#endif

// A linear layer's weight and bias gradients for dy [M, N] and its input x [M, K], in w's and b's
// dtypes: dy^T x, and the column sums of dy as a GEMM against ones. (cuBLASLt's BGRADB epilogue, which
// would sum the bias gradient inside the weight-gradient GEMM, ran as a kernel of its own here and was
// slower: H100, 1.96 ms a 160m step at 2 x 8192, against 0.9 for these GEMMs.)
torch::Tensor weight_grad(const torch::Tensor& dy, const torch::Tensor& x, at::ScalarType w_dtype) {
  return mm_to(dy.t(), x, w_dtype);
}
torch::Tensor bias_grad(const torch::Tensor& dy, at::ScalarType b_dtype) {
  return mm_to(torch::ones({1, dy.size(0)}, dy.options()), dy, b_dtype).view({-1});
}

// x in the compute dtype; w and b in their own (float32 master weights under autocast), cast
// here to x's dtype. The weight and bias gradients come out of their GEMMs in w's and b's dtype
// (bf16 products, float32 accumulation and output: at::mm's out_dtype), so no cast kernel turns
// bf16 gradients into float32 ones afterwards. add_bias false: b is left to the caller (neither added
// nor given a gradient here).
struct LinearGemmGrads : public torch::autograd::Function<LinearGemmGrads> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, const torch::Tensor& b, bool add_bias) {
    const auto t = x.scalar_type();
    const auto wt = cast_weight(w, t);
    ctx->save_for_backward({x, wt});
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    ctx->saved_data["b_dtype"] = static_cast<int64_t>(b.scalar_type());
    ctx->saved_data["add_bias"] = add_bias;
    if (!add_bias) return x.mm(wt.t());
    return at::addmm(cast_weight(b, t), x, wt.t());  // bias in the cuBLASLt epilogue on CUDA
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1];
    auto dy = grads[0].contiguous();
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const auto b_dtype = static_cast<at::ScalarType>(ctx->saved_data["b_dtype"].toInt());
    torch::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = dy.mm(w);
    if (ctx->needs_input_grad(1)) dw = weight_grad(dy, x, w_dtype);
    if (ctx->needs_input_grad(2) && ctx->saved_data["add_bias"].toBool()) db = bias_grad(dy, b_dtype);
    return {dx, dw, db, torch::Tensor()};
  }
};

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
// gelu(x W^T + b) for bf16 x and float32 W, b (CUDA autocast): the GEMM as LinearGemmGrads, GELU by
// our kernel; the backward's kernel writes GELU's input gradient and its column sums (b's gradient)
// in one pass, so no GEMM against ones. The pre-activation is saved, as LibTorch's GELU saves it.
struct LinearGelu : public torch::autograd::Function<LinearGelu> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, const torch::Tensor& b) {
    const c10::cuda::CUDAGuard guard(x.device());
    const auto wt = cast_weight(w, at::kBFloat16);
    auto a = at::addmm(cast_weight(b, at::kBFloat16), x, wt.t());
    auto y = at::empty_like(a);
    kernels::cuda::gelu_forward_bf16(a.data_ptr(), y.data_ptr(), a.numel(), c10::cuda::getCurrentCUDAStream().stream());
    ctx->save_for_backward({x, wt, a});
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &a = saved[2];
    const c10::cuda::CUDAGuard guard(x.device());
    auto dy = grads[0].to(at::kBFloat16).contiguous();
    const int64_t rows = a.size(0);
    const int cols = static_cast<int>(a.size(1));
    auto da = at::empty_like(a);
    const auto f32 = a.options().dtype(at::kFloat);
    auto partial = at::empty({kernels::cuda::gelu_backward_partials(rows, cols), cols}, f32);
    auto db = at::empty({cols}, f32);
    kernels::cuda::gelu_backward_bf16(dy.data_ptr(), a.data_ptr(), da.data_ptr(), partial.data_ptr<float>(),
                                      db.data_ptr<float>(), rows, cols, c10::cuda::getCurrentCUDAStream().stream());
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = da.mm(w);
    if (ctx->needs_input_grad(1)) dw = at::mm(da.t(), x, at::kFloat);
    return {dx, dw, db};
  }
};

// fc2(gelu_tanh(fc1(x))) for bf16 x [M, D] and float32 weights (CUDA autocast) as one node whose GELU
// runs in cuBLASLt's epilogues: fc1's GEMM writes the pre-activation a and h = gelu_tanh(a), and fc2's
// input-gradient GEMM multiplies by gelu_tanh'(a) as it writes da. Where cuBLASLt has no such
// algorithm, the same node runs ATen's ops. add_b2 false: fc2's bias is left to the caller.
struct FeedForwardGeluTanh : public torch::autograd::Function<FeedForwardGeluTanh> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w1,
                               const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& b2,
                               bool add_b2) {
    const c10::cuda::CUDAGuard guard(x.device());
    const auto bf16 = at::kBFloat16;
    const auto w1c = cast_weight(w1, bf16), b1c = cast_weight(b1, bf16), w2c = cast_weight(w2, bf16);
    const int64_t M = x.size(0), D = x.size(1), F = w1.size(0);
    auto a = at::empty({M, F}, x.options()), h = at::empty_like(a);
    if (!(lt_operands({&x, &w1c, &a}) &&
          kernels::cuda::gemm_bias_gelu_tanh(lt_context(), x.data_ptr(), w1c.data_ptr(), b1c.data_ptr(), a.data_ptr(),
                                             h.data_ptr(), M, F, D))) {
      a = at::addmm(b1c, x, w1c.t());
      h = at::gelu(a, "tanh");
    }
    ctx->save_for_backward({x, w1c, a, h, w2c});
    ctx->saved_data["add_b2"] = add_b2;
    if (!add_b2) return h.mm(w2c.t());
    return at::addmm(cast_weight(b2, bf16), h, w2c.t());
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w1 = saved[1], &a = saved[2], &h = saved[3], &w2 = saved[4];
    const c10::cuda::CUDAGuard guard(x.device());
    auto dy = grads[0].to(at::kBFloat16).contiguous();
    const int64_t M = x.size(0), D = x.size(1), F = w1.size(0);
    auto da = at::empty_like(a);
    if (!(lt_operands({&dy, &w2, &a}) &&
          kernels::cuda::gemm_dgelu_tanh(lt_context(), dy.data_ptr(), w2.data_ptr(), a.data_ptr(), da.data_ptr(), M, D,
                                         F)))
      da = at::gelu_backward(dy.mm(w2), a, "tanh");
    torch::Tensor dx;
    if (ctx->needs_input_grad(0)) dx = da.mm(w1);
    const auto f32 = at::kFloat;
    torch::Tensor db2;
    if (ctx->saved_data["add_b2"].toBool()) db2 = bias_grad(dy, f32);
    return {dx, weight_grad(da, x, f32), bias_grad(da, f32), weight_grad(dy, h, f32), db2, torch::Tensor()};
  }
};
#endif

std::atomic<bool> g_direct_weight_grads{true};
std::atomic<bool> g_fused_gelu{true};

// The CUDA autocast path on which float32 weights go into the GEMM functions as they are.
bool direct_weight_grads(c10::DeviceType dev, const torch::Tensor& w, const torch::Tensor& b, at::ScalarType t) {
  return dev == c10::DeviceType::CUDA && g_direct_weight_grads.load(std::memory_order_relaxed) &&
         w.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && t != at::kFloat;
}

}  // namespace

void set_direct_weight_grads(bool on) { g_direct_weight_grads.store(on); }

torch::Tensor linear_gemm_grads(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, bool add_bias) {
  const auto dev = x.device().type();
  if (at::autocast::is_autocast_enabled(dev)) {
    const auto t = at::autocast::get_autocast_dtype(dev);
    // On CUDA the float32 weights go in as they are (cast inside, gradients straight from the
    // GEMMs); elsewhere (at::mm's out_dtype is CUDA-only), or with set_direct_weight_grads(false),
    // through the autocast weight cache, whose cast's backward casts the gradients.
    if (direct_weight_grads(dev, w, b, t))
      return LinearGemmGrads::apply(at::autocast::cached_cast(t, x, dev), w, b, add_bias);
    return LinearGemmGrads::apply(at::autocast::cached_cast(t, x, dev), at::autocast::cached_cast(t, w, dev),
                                  at::autocast::cached_cast(t, b, dev), add_bias);
  }
  return LinearGemmGrads::apply(x, w, b, add_bias);
}

// Linear layers see [B*N, d]: a 2-D input takes addmm, whose cuBLASLt path adds the bias
// in the GEMM epilogue; for 3-D inputs at::linear here ran matmul + a broadcast add_.
// On CUDA, linear_gemm_grads also makes the bias and weight gradients cheaper.
torch::Tensor linear_2d(torch::nn::Linear& l, const torch::Tensor& x, bool add_bias) {
  auto apply = [&](const torch::Tensor& x2) {
    if (x2.is_cuda() && l->bias.defined()) return linear_gemm_grads(x2, l->weight, l->bias, add_bias);
    return add_bias ? l(x2) : torch::nn::functional::linear(x2, l->weight);
  };
  if (x.dim() == 2) return apply(x);
  auto sizes = x.sizes().vec();
  auto y = apply(x.reshape({-1, sizes.back()}));
  sizes.back() = y.size(1);
  return y.view(sizes);
}

void set_fused_gelu(bool on) { g_fused_gelu.store(on); }

void set_lt_epilogues(bool on) { g_lt_epilogues.store(on); }

torch::Tensor linear_gelu(torch::nn::Linear& l, const torch::Tensor& x, bool gelu_tanh) {
  if (gelu_tanh) return torch::gelu(linear_2d(l, x), "tanh");
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  const auto& w = l->weight;
  const auto& b = l->bias;
  const int64_t cols = w.size(0);
  const auto cuda = c10::DeviceType::CUDA;
  if (x.is_cuda() && g_fused_gelu.load(std::memory_order_relaxed) && at::autocast::is_autocast_enabled(cuda) &&
      at::autocast::get_autocast_dtype(cuda) == at::kBFloat16 && b.defined() &&
      direct_weight_grads(cuda, w, b, at::kBFloat16) && cols % 8 == 0) {
    auto sizes = x.sizes().vec();
    auto x2 = at::autocast::cached_cast(at::kBFloat16, x.reshape({-1, sizes.back()}), cuda).contiguous();
    auto y = LinearGelu::apply(x2, w, b);
    sizes.back() = cols;
    return y.view(sizes);
  }
#endif
  return torch::gelu(linear_2d(l, x));
}

torch::Tensor feed_forward(torch::nn::Linear& fc1, torch::nn::Linear& fc2, const torch::Tensor& x, bool gelu_tanh,
                           bool add_b2) {
  if (!gelu_tanh) return linear_2d(fc2, linear_gelu(fc1, x), add_b2);
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  const auto cuda = c10::DeviceType::CUDA;
  if (x.is_cuda() && at::autocast::is_autocast_enabled(cuda) &&
      at::autocast::get_autocast_dtype(cuda) == at::kBFloat16 && fc1->bias.defined() && fc2->bias.defined() &&
      direct_weight_grads(cuda, fc1->weight, fc1->bias, at::kBFloat16) &&
      direct_weight_grads(cuda, fc2->weight, fc2->bias, at::kBFloat16)) {
    auto sizes = x.sizes().vec();
    auto x2 = at::autocast::cached_cast(at::kBFloat16, x.reshape({-1, sizes.back()}), cuda).contiguous();
    auto y = FeedForwardGeluTanh::apply(x2, fc1->weight, fc1->bias, fc2->weight, fc2->bias, add_b2);
    sizes.back() = y.size(1);
    return y.view(sizes);
  }
#endif
  return linear_2d(fc2, torch::gelu(linear_2d(fc1, x), "tanh"), add_b2);
}

}  // namespace sctrain::model
