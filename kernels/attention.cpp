// sigmoid_attention: a LibTorch autograd function over the CUDA kernels, else the reference.
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "kernels/attention.h"

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/attention_cuda.h"
#endif

namespace sctrain::kernels {

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
namespace cuda {
int device_sm();
}
namespace {

using torch::Tensor;

// The Hopper kernels on sm_90 unless SCTRAIN_ATTENTION_PATH=sm80 (tests run both).
bool use_hopper_path() {
  const char* env = std::getenv("SCTRAIN_ATTENTION_PATH");
  if (env && std::string(env) == "sm80") return false;
  return cuda::device_sm() == 90;
}

// The kernels read 16-byte chunks: unit last stride, other strides and the start 8-element aligned.
bool kernel_layout_ok(const Tensor& x) {
  if (x.stride(3) != 1) return false;
  for (int d = 0; d < 3; ++d)
    if (x.stride(d) % 8 != 0 && x.size(d) > 1) return false;
  return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
}
Tensor kernel_layout(const Tensor& x) { return kernel_layout_ok(x) ? x : x.contiguous(); }

cuda::AttnParams make_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lengths,
                             double scale, double bias, bool has_bias) {
  cuda::AttnParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  for (int d = 0; d < 3; ++d) {
    const int src = d == 0 ? 0 : d == 1 ? 1 : 2;
    p.q_stride[d] = q.stride(src);
    p.k_stride[d] = k.stride(src);
    p.v_stride[d] = v.stride(src);
  }
  p.lengths = lengths.data_ptr<int32_t>();
  p.B = static_cast<int>(q.size(0));
  p.N = static_cast<int>(q.size(1));
  p.H = static_cast<int>(q.size(2));
  p.D = static_cast<int>(q.size(3));
  p.scale = static_cast<float>(scale);
  p.bias = static_cast<float>(bias);
  p.has_bias = has_bias;
  p.dtype = q.scalar_type() == torch::kBFloat16 ? cuda::DType::BF16 : cuda::DType::F16;
  return p;
}

// Launches the backward: dK, dV into dk_out, dv_out (any [B, N, H, D] views with unit last stride),
// dQ accumulated in fp32 and then converted into dq_out.
void run_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lengths, const Tensor& dout_in,
                  torch::autograd::AutogradContext* ctx, const Tensor& dq_out, const Tensor& dk_out,
                  const Tensor& dv_out) {
  const c10::cuda::CUDAGuard guard(q.device());
  TORCH_CHECK(dk_out.strides() == dv_out.strides() && dk_out.stride(3) == 1 && kernel_layout_ok(dq_out) &&
                  dq_out.scalar_type() == q.scalar_type(),
              "sigmoid attention: gradient layout");
  auto dout = kernel_layout(dout_in.to(q.scalar_type()));
  auto p = make_params(q, k, v, lengths, ctx->saved_data["scale"].toDouble(), ctx->saved_data["bias"].toDouble(),
                       ctx->saved_data["has_bias"].toBool());
  const bool hopper = use_hopper_path();
  p.dq_tiled = hopper;  // the Hopper kernel's accumulator layout
  auto dq = torch::zeros({cuda::dq_accum_numel(p)}, q.options().dtype(torch::kFloat));
  p.dout = dout.data_ptr();
  for (int d = 0; d < 3; ++d) {
    p.do_stride[d] = dout.stride(d);
    p.dkv_stride[d] = dk_out.stride(d);
  }
  p.dq_accum = dq.data_ptr<float>();
  p.dk = dk_out.data_ptr();
  p.dv = dv_out.data_ptr();
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (!(hopper && cuda::backward_sm90(p, stream))) {
    p.dq_tiled = false;  // the tiled buffer is at least as large, and still zero
    cuda::backward_sm80(p, stream);
  }
  const int64_t dq_stride[3] = {dq_out.stride(0), dq_out.stride(1), dq_out.stride(2)};
  cuda::convert_dq(p, dq_out.data_ptr(), dq_stride, stream);
}

Tensor run_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lengths, double scale, double bias,
                   bool has_bias) {
  auto o = torch::empty(q.sizes(), q.options().memory_format(torch::MemoryFormat::Contiguous));
  auto p = make_params(q, k, v, lengths, scale, bias, has_bias);
  p.o = o.data_ptr();
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (!(use_hopper_path() && cuda::forward_sm90(p, stream))) cuda::forward_sm80(p, stream);
  return o;
}

void save_options(torch::autograd::AutogradContext* ctx, double scale, double bias, bool has_bias) {
  ctx->saved_data["scale"] = scale;
  ctx->saved_data["bias"] = bias;
  ctx->saved_data["has_bias"] = has_bias;
}

class SigmoidAttentionFn : public torch::autograd::Function<SigmoidAttentionFn> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor q, Tensor k, Tensor v,
                        Tensor lengths, double scale, double bias, bool has_bias) {
    const c10::cuda::CUDAGuard guard(q.device());
    q = kernel_layout(q);
    k = kernel_layout(k);
    v = kernel_layout(v);
    auto o = run_forward(q, k, v, lengths, scale, bias, has_bias);
    ctx->save_for_backward({q, k, v, lengths});
    save_options(ctx, scale, bias, has_bias);
    return o;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &lengths = saved[3];
    auto dq = torch::empty_like(q, torch::MemoryFormat::Contiguous);
    auto dk = torch::empty_like(dq), dv = torch::empty_like(dq);
    run_backward(q, k, v, lengths, grads[0], ctx, dq, dk, dv);
    return {dq, dk, dv, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The same on one packed [B, N, 3, H, D] tensor (the fused QKV projection's output): the gradient is
// one packed tensor too, dK and dV written into it by the kernel, so no stack of three gradients.
class PackedSigmoidAttentionFn : public torch::autograd::Function<PackedSigmoidAttentionFn> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor qkv, Tensor lengths, double scale,
                        double bias, bool has_bias) {
    const c10::cuda::CUDAGuard guard(qkv.device());
    if (!(kernel_layout_ok(qkv.select(2, 0)) && kernel_layout_ok(qkv.select(2, 1)) && kernel_layout_ok(qkv.select(2, 2))))
      qkv = qkv.contiguous();
    auto o = run_forward(qkv.select(2, 0), qkv.select(2, 1), qkv.select(2, 2), lengths, scale, bias, has_bias);
    ctx->save_for_backward({qkv, lengths});
    save_options(ctx, scale, bias, has_bias);
    return o;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &qkv = saved[0], &lengths = saved[1];
    auto dqkv = torch::empty_like(qkv, torch::MemoryFormat::Contiguous);
    run_backward(qkv.select(2, 0), qkv.select(2, 1), qkv.select(2, 2), lengths, grads[0], ctx, dqkv.select(2, 0),
                 dqkv.select(2, 1), dqkv.select(2, 2));
    return {dqkv, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

namespace cuda {
int device_sm() {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  return prop->major * 10 + prop->minor;
}
}  // namespace cuda
#endif

bool sigmoid_attention_kernel_supports(const torch::Tensor& q) {
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  if (!q.is_cuda() || q.dim() != 4) return false;
  if (q.scalar_type() != torch::kBFloat16 && q.scalar_type() != torch::kHalf) return false;
  if (q.size(3) != 64 && q.size(3) != 128) return false;
  if (q.size(1) > (1 << 30) / std::max<int64_t>(1, q.size(2) * q.size(3))) return false;
  const auto* prop = at::cuda::getDeviceProperties(q.device().index());
  return prop->major >= 8;
#else
  (void)q;
  return false;
#endif
}

torch::Tensor sigmoid_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& lengths, const SigmoidAttentionOptions& opts) {
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  if (sigmoid_attention_kernel_supports(q) && k.sizes() == q.sizes() && v.sizes() == q.sizes() &&
      k.device() == q.device() && v.device() == q.device() && k.scalar_type() == q.scalar_type() &&
      v.scalar_type() == q.scalar_type()) {
    TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == q.size(0), "sigmoid_attention: lengths must be [B]");
    const double scale = opts.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
    auto len = lengths.to(q.device(), torch::kInt).contiguous();
    return SigmoidAttentionFn::apply(q, k, v, len, scale, opts.bias.value_or(0.0), opts.bias.has_value());
  }
#endif
  return sigmoid_attention_reference(q, k, v, lengths, opts);
}

torch::Tensor sigmoid_attention_packed(const torch::Tensor& qkv, const torch::Tensor& lengths,
                                       const SigmoidAttentionOptions& opts) {
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3, "sigmoid_attention_packed: qkv must be [B, N, 3, H, D]");
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  if (sigmoid_attention_kernel_supports(qkv.select(2, 0))) {
    TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == qkv.size(0), "sigmoid_attention: lengths must be [B]");
    const double scale = opts.scale.value_or(1.0 / std::sqrt(static_cast<double>(qkv.size(4))));
    auto len = lengths.to(qkv.device(), torch::kInt).contiguous();
    return PackedSigmoidAttentionFn::apply(qkv, len, scale, opts.bias.value_or(0.0), opts.bias.has_value());
  }
#endif
  const auto views = qkv.unbind(2);
  return sigmoid_attention(views[0], views[1], views[2], lengths, opts);
}

}  // namespace sctrain::kernels
