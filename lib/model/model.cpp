#include "model/model.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <stdexcept>

#include "data/batch.h"
#include "kernels/attention.h"
#include "util/log.h"

namespace sctrain::model {

void ModelConfig::validate() const {
  auto fail = [](const std::string& m) { throw std::invalid_argument("model." + m); };
  if (vocab_size <= data::kNumSpecial) fail(str("vocab_size: ", vocab_size, " is too small"));
  if (d_model <= 0 || n_layers <= 0 || n_heads <= 0 || d_ff <= 0 || max_len <= 1)
    fail("d_model, n_layers, n_heads, d_ff must be positive and max_len > 1");
  if (d_model % n_heads != 0)
    fail(str("n_heads: d_model ", d_model, " is not divisible by n_heads ", n_heads));
  if (attention != "softmax" && attention != "sigmoid")
    fail(str("attention: '", attention, "' is neither softmax nor sigmoid"));
  if (norm != "pre" && norm != "post") fail(str("norm: '", norm, "' is neither pre nor post"));
  if (activation != "gelu" && activation != "gelu_tanh")
    fail(str("activation: '", activation, "' is neither gelu nor gelu_tanh"));
  if (n_bins < 0) fail("n_bins: must be >= 0");
  if (dropout < 0 || dropout >= 1) fail("dropout: must be in [0, 1)");
}

int64_t count_parameters(const ModelConfig& c) {
  const int64_t d = c.d_model, V = c.vocab_size;
  int64_t n = V * d + 2 * d;                 // gene embedding, embedding LayerNorm
  if (c.n_bins > 0) n += c.n_bins * d;
  if (c.position_embedding) n += c.max_len * d;
  int64_t block = 4 * d                      // ln1, ln2
                  + 3 * d * d + 3 * d        // fused qkv
                  + d * d + d                // output projection
                  + d * c.d_ff + c.d_ff      // fc1
                  + c.d_ff * d + d;          // fc2
  if (c.qk_norm) block += 4 * c.head_dim();
  if (c.layer_scale > 0) block += 2 * d;
  n += c.n_layers * block;
  if (c.norm == "pre") n += 2 * d;           // final LayerNorm
  n += d * d + d + 2 * d + V;                // head: dense, LayerNorm, bias (weight tied)
  return n;
}

double training_flops(const ModelConfig& c, int64_t params, const int32_t* lengths, int64_t n) {
  double tokens = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    tokens += lengths[i];
    sq += static_cast<double>(lengths[i]) * lengths[i];
  }
  return 6.0 * static_cast<double>(params) * tokens +
         12.0 * static_cast<double>(c.n_layers) * static_cast<double>(c.d_model) * sq;
}

Inputs to_inputs(const data::Batch& b, const torch::Device& device) {
  const int64_t B = b.batch_size, N = b.seq_len;
  if (static_cast<int64_t>(b.tokens.size()) != B * N || static_cast<int64_t>(b.lengths.size()) != B)
    throw std::invalid_argument(str("to_inputs: batch of ", B, " x ", N, " has ", b.tokens.size(),
                                    " tokens and ", b.lengths.size(), " lengths"));
  auto i32 = torch::TensorOptions().dtype(torch::kInt);
  Inputs in;
  in.tokens = torch::from_blob(const_cast<int32_t*>(b.tokens.data()), {B, N}, i32).to(torch::kLong);
  if (!b.bins.empty())
    in.bins = torch::from_blob(const_cast<int32_t*>(b.bins.data()), {B, N}, i32).to(torch::kLong);
  in.lengths = torch::from_blob(const_cast<int32_t*>(b.lengths.data()), {B}, i32).clone();
  in.labels = torch::from_blob(const_cast<int32_t*>(b.labels.data()), {B, N}, i32).to(torch::kLong);
  std::vector<int64_t> pos, tgt;
  for (int64_t i = 0; i < B * N; ++i)
    if (b.labels[i] != data::kIgnoreLabel) {
      pos.push_back(i);
      tgt.push_back(b.labels[i]);
    }
  in.masked_positions = torch::tensor(pos, torch::kLong);
  in.masked_targets = torch::tensor(tgt, torch::kLong);
  in.max_length = 0;
  in.min_length = N;
  for (int32_t l : b.lengths) {
    in.max_length = std::max<int64_t>(in.max_length, l);
    in.min_length = std::min<int64_t>(in.min_length, l);
  }
  if (device != torch::Device(torch::kCPU)) {
    // CUDA: from pinned memory, non-blocking. A pageable host-to-device copy synchronizes
    // the stream, which would make the host wait for all queued GPU work here.
    for (auto* t : {&in.tokens, &in.bins, &in.lengths, &in.labels, &in.masked_positions,
                    &in.masked_targets})
      if (t->defined())
        *t = device.is_cuda() ? t->pin_memory().to(device, /*non_blocking=*/true) : t->to(device);
  }
  return in;
}

// ---- LayerNorm feeding a GEMM ----------------------------------------------------------

namespace {
std::atomic<bool> g_bf16_layer_norm{true}, g_split_norm_input{true};

struct SplitForBf16Norm : public torch::autograd::Function<SplitForBf16Norm> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    return {x, x.to(at::kBFloat16)};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    const auto &gx = grads[0], &gb = grads[1];
    if (!gb.defined()) return {gx};
    if (!gx.defined()) return {gb.to(at::kFloat)};
    return {gx + gb};  // float32 + bf16 -> float32, one kernel
  }
};
}  // namespace

void set_bf16_layer_norm(bool on) { g_bf16_layer_norm.store(on); }
bool bf16_layer_norm() { return g_bf16_layer_norm.load(); }
void set_split_norm_input(bool on) { g_split_norm_input.store(on); }
bool split_norm_input() { return g_split_norm_input.load(std::memory_order_relaxed); }

bool bf16_norm_path(const torch::Tensor& x) {
  constexpr auto dev = c10::DeviceType::CUDA;
  return x.is_cuda() && g_bf16_layer_norm.load(std::memory_order_relaxed) &&
         at::autocast::is_autocast_enabled(dev) && at::autocast::get_autocast_dtype(dev) == at::kBFloat16;
}

std::pair<torch::Tensor, torch::Tensor> split_for_bf16_norm(const torch::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "split_for_bf16_norm: float32 input expected, got ", x.scalar_type());
  auto out = SplitForBf16Norm::apply(x);
  return {out[0], out[1]};
}

torch::Tensor layer_norm_for_gemm(torch::nn::LayerNorm& ln, const torch::Tensor& x) {
  constexpr auto dev = c10::DeviceType::CUDA;
  if (!bf16_norm_path(x)) return ln(x);
  const auto& o = ln->options;
  torch::Tensor w, b;
  if (o.elementwise_affine()) {
    w = at::autocast::cached_cast(at::kBFloat16, ln->weight, dev);
    b = at::autocast::cached_cast(at::kBFloat16, ln->bias, dev);
  }
  // Autocast would run layer_norm in float32: dispatch past it for this one call.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  return at::layer_norm(x.to(at::kBFloat16), o.normalized_shape(), w, b, o.eps());
}

// ---- Attention ----------------------------------------------------------------

AttentionImpl::AttentionImpl(const ModelConfig& c) : c_(c), sigmoid_(c.attention == "sigmoid") {
  qkv = register_module("qkv", torch::nn::Linear(c.d_model, 3 * c.d_model));
  proj = register_module("proj", torch::nn::Linear(c.d_model, c.d_model));
  if (c.qk_norm) {
    auto o = torch::nn::LayerNormOptions({c.head_dim()}).eps(c.ln_eps);
    q_norm = register_module("q_norm", torch::nn::LayerNorm(o));
    k_norm = register_module("k_norm", torch::nn::LayerNorm(o));
  }
}

namespace {
std::atomic<bool> g_packed_qkv{true};
}  // namespace

void set_packed_qkv_attention(bool on) { g_packed_qkv.store(on); }

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const AttentionContext& ctx, bool add_proj_bias) {
  const int64_t B = x.size(0), N = x.size(1), H = c_.n_heads, Dh = c_.head_dim();
  auto fused = linear_2d(qkv, x).view({B, N, 3, H, Dh});
  kernels::SigmoidAttentionOptions sigmoid_opts;
  sigmoid_opts.bias = c_.sigmoid_bias;
  torch::Tensor o;  // [B, N, H, Dh]
  if (sigmoid_ && !c_.qk_norm && g_packed_qkv.load(std::memory_order_relaxed)) {
    // The kernel reads q, k, v inside the fused projection and writes their gradient packed.
    o = kernels::sigmoid_attention_packed(fused, ctx.lengths, sigmoid_opts);
  } else {
    // Strided views [B, N, H, Dh] into the fused projection: no copies. unbind, not three
    // selects: its backward stacks dq, dk, dv into one buffer, where each select's backward
    // would zero-fill a full [B, N, 3, H, Dh] tensor and the three would then be summed.
    auto views = fused.unbind(2);
    torch::Tensor q = views[0], k = views[1], v = views[2];
    if (c_.qk_norm) {
      // Under autocast's float32 LayerNorm (CPU autocast, or the bf16 path off), bring q and
      // k back to v's dtype; on the CUDA bf16 path they already are.
      q = layer_norm_for_gemm(q_norm, q).to(v.scalar_type());
      k = layer_norm_for_gemm(k_norm, k).to(v.scalar_type());
    }
    if (sigmoid_) {
      o = kernels::sigmoid_attention(q, k, v, ctx.lengths, sigmoid_opts);
    } else {
      std::optional<at::Tensor> mask;
      if (ctx.key_mask.defined()) mask = ctx.key_mask;
      const double p = is_training() ? c_.dropout : 0.0;
      o = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, p,
                                           /*is_causal=*/false)
              .transpose(1, 2);
    }
  }
  return linear_2d(proj, o.reshape({B, N, c_.d_model}), add_proj_bias);
}

// ---- Feed-forward and block ------------------------------------------------------

FeedForwardImpl::FeedForwardImpl(const ModelConfig& c) : gelu_tanh_(c.activation == "gelu_tanh") {
  fc1 = register_module("fc1", torch::nn::Linear(c.d_model, c.d_ff));
  fc2 = register_module("fc2", torch::nn::Linear(c.d_ff, c.d_model));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x, bool add_fc2_bias) {
  return feed_forward(fc1, fc2, x, gelu_tanh_, add_fc2_bias);
}

BlockImpl::BlockImpl(const ModelConfig& c) : pre_ln_(c.norm == "pre"), dropout_(c.dropout) {
  auto o = torch::nn::LayerNormOptions({c.d_model}).eps(c.ln_eps);
  ln1 = register_module("ln1", torch::nn::LayerNorm(o));
  attn = register_module("attn", Attention(c));
  ln2 = register_module("ln2", torch::nn::LayerNorm(o));
  ffn = register_module("ffn", FeedForward(c));
  if (c.layer_scale > 0) {
    gamma1 = register_parameter("gamma1", torch::full({c.d_model}, c.layer_scale));
    gamma2 = register_parameter("gamma2", torch::full({c.d_model}, c.layer_scale));
  }
}

static torch::Tensor residual_branch(torch::Tensor y, const torch::Tensor& gamma, double dropout, bool training) {
  if (gamma.defined()) y = y * gamma;
  if (dropout > 0) y = torch::dropout(y, dropout, training);
  return y;
}

namespace {
std::atomic<bool> g_branch_bias_in_norm{true};
}  // namespace

void set_branch_bias_in_norm(bool on) { g_branch_bias_in_norm.store(on); }

Residual BlockImpl::forward_residual(const Residual& in, const AttentionContext& ctx) {
  TORCH_CHECK(pre_ln_, "Block::forward_residual: pre-LN blocks only");
  // Each add goes into the norm after it (add_layer_norm; on the CUDA bf16 path one fused
  // kernel, elsewhere the add, then the norm as before). The residual stream stays float32.
  // Where that kernel runs, it also adds proj's and fc2's biases (LayerScale and dropout come
  // after the bias, so not with them).
  const bool bias_in_norm = g_branch_bias_in_norm.load(std::memory_order_relaxed) && !gamma1.defined() &&
                            !(dropout_ > 0 && is_training()) && fused_add_norm_path(in.r, {}, ln1);
  auto a = add_layer_norm(in.r, in.h, ln1, true, in.hb);
  auto h1 = residual_branch(attn(a.y, ctx, !bias_in_norm), gamma1, dropout_, is_training());
  auto b = add_layer_norm(a.x, h1, ln2, true, bias_in_norm ? attn->proj->bias : torch::Tensor());
  return {b.x, residual_branch(ffn(b.y, !bias_in_norm), gamma2, dropout_, is_training()),
          bias_in_norm ? ffn->fc2->bias : torch::Tensor()};
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x_in, const AttentionContext& ctx) {
  if (pre_ln_) return forward_residual({x_in, {}, {}}, ctx).sum();
  // post-LN: the norms' outputs are the residual stream; autocast's float32 norm
  torch::Tensor x = x_in;
  x = ln1(x + residual_branch(attn(x, ctx), gamma1, dropout_, is_training()));
  x = ln2(x + residual_branch(ffn(x), gamma2, dropout_, is_training()));
  return x;
}

// ---- Model -------------------------------------------------------------------------

ModelImpl::ModelImpl(const ModelConfig& c) : c_(c) {
  c.validate();
  const int64_t d = c.d_model;
  auto ln = torch::nn::LayerNormOptions({d}).eps(c.ln_eps);
  gene_emb = register_module("gene_emb", torch::nn::Embedding(c.vocab_size, d));
  if (c.n_bins > 0) bin_emb = register_module("bin_emb", torch::nn::Embedding(c.n_bins, d));
  if (c.position_embedding) pos_emb = register_module("pos_emb", torch::nn::Embedding(c.max_len, d));
  emb_norm = register_module("emb_norm", torch::nn::LayerNorm(ln));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layers; ++i) blocks->push_back(Block(c));
  if (c.norm == "pre") final_norm = register_module("final_norm", torch::nn::LayerNorm(ln));
  head_dense = register_module("head_dense", torch::nn::Linear(d, d));
  head_norm = register_module("head_norm", torch::nn::LayerNorm(ln));
  head_bias = register_parameter("head_bias", torch::zeros({c.vocab_size}));

  // Initialization: N(0, init_std) for matrices and embeddings, zero biases; the projections
  // that write into the residual stream are scaled down by sqrt(2 * n_layers).
  torch::NoGradGuard no_grad;
  const double out_std = c.init_std / std::sqrt(2.0 * static_cast<double>(c.n_layers));
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    auto& p = item.value();
    if (name.find("norm") != std::string::npos || name.find(".ln") != std::string::npos ||
        name.find("gamma") != std::string::npos)
      continue;  // LayerNorm weights/biases and LayerScale keep their initial values
    if (p.dim() == 1) {
      p.zero_();
    } else if (name.find("proj.weight") != std::string::npos ||
               name.find("fc2.weight") != std::string::npos) {
      p.normal_(0.0, out_std);
    } else {
      p.normal_(0.0, c.init_std);
    }
  }
}

torch::Tensor ModelImpl::forward(const Inputs& in) {
  const int64_t B = in.tokens.size(0), N = in.tokens.size(1);
  TORCH_CHECK(N <= c_.max_len || !c_.position_embedding, "sequence of ", N,
              " tokens exceeds model.max_len ", c_.max_len);
  if (in.tokens.is_cuda()) refresh_weight_casts();  // the GEMMs' bf16 weight copies, after an update
  auto h = gene_emb(in.tokens);
  if (bin_emb) {
    TORCH_CHECK(in.bins.defined(), "model.n_bins > 0 but the batch has no expression bins");
    h = h + bin_emb(in.bins);
  }
  if (pos_emb) h = h + pos_emb->weight.narrow(0, 0, N).unsqueeze(0);
  h = emb_norm(h);
  if (c_.dropout > 0) h = torch::dropout(h, c_.dropout, is_training());

  AttentionContext ctx;
  ctx.lengths = in.lengths.to(h.device(), torch::kInt);
  // SDPA: a key-padding mask only when some sequence is shorter than N, so that unpadded
  // batches keep the fastest (flash) backend.
  if (c_.attention == "softmax" && in.min_length < N) {
    auto pos = torch::arange(N, torch::TensorOptions().dtype(torch::kInt).device(h.device()));
    ctx.key_mask = (pos.unsqueeze(0) < ctx.lengths.unsqueeze(1)).view({B, 1, 1, N});
  }
  if (c_.norm != "pre") {
    for (const auto& m : *blocks) h = m->as<Block>()->forward(h, ctx);
    return h;
  }
  // Pre-LN: the last block's residual add goes into the final norm.
  Residual s{h, {}, {}};
  for (const auto& m : *blocks) s = m->as<Block>()->forward_residual(s, ctx);
  return add_layer_norm(s.r, s.h, final_norm, /*for_gemm=*/false, s.hb).y;
}

MlmOutput ModelImpl::mlm(const torch::Tensor& hidden, const torch::Tensor& labels) {
  auto flat = labels.reshape({-1});
  auto pos = (flat != data::kIgnoreLabel).nonzero().squeeze(1);
  return mlm(hidden, pos, flat.index_select(0, pos));
}

MlmOutput ModelImpl::mlm(const torch::Tensor& hidden, const torch::Tensor& positions,
                         const torch::Tensor& targets) {
  MlmOutput out;
  out.n_masked = positions.size(0);
  auto h = hidden.reshape({-1, c_.d_model}).index_select(0, positions);  // [M, d]
  h = layer_norm_for_gemm(head_norm, linear_gelu(head_dense, h, c_.activation == "gelu_tanh"));
  out.logits = h.is_cuda() ? linear_gemm_grads(h, gene_emb->weight, head_bias)  // [M, V]
                           : torch::nn::functional::linear(h, gene_emb->weight, head_bias);
  out.targets = targets;
  if (out.n_masked == 0)
    out.loss = out.logits.sum().to(torch::kFloat) * 0.0;  // keeps the graph; no NaN
  else
    out.loss = mean_cross_entropy(out.logits, targets);
  return out;
}

MlmOutput ModelImpl::mlm(const torch::Tensor& hidden, const Inputs& in) {
  if (in.masked_positions.defined()) return mlm(hidden, in.masked_positions, in.masked_targets);
  return mlm(hidden, in.labels);
}

int64_t ModelImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

std::vector<std::string> ModelImpl::block_names() const {
  std::vector<std::string> names{"embed"};
  for (int64_t i = 0; i < c_.n_layers; ++i) names.push_back(str("block", i));
  names.push_back("head");
  return names;
}

std::vector<std::vector<torch::Tensor>> ModelImpl::parameter_groups() const {
  std::vector<std::vector<torch::Tensor>> groups(c_.n_layers + 2);
  for (const auto& item : named_parameters()) {
    const std::string& name = item.key();
    size_t g = groups.size() - 1;  // head: final_norm, head_*
    if (name.rfind("gene_emb", 0) == 0 || name.rfind("bin_emb", 0) == 0 ||
        name.rfind("pos_emb", 0) == 0 || name.rfind("emb_norm", 0) == 0) {
      g = 0;
    } else if (name.rfind("blocks.", 0) == 0) {
      g = 1 + std::stoul(name.substr(7, name.find('.', 7) - 7));
    }
    groups[g].push_back(item.value());
  }
  return groups;
}

}  // namespace sctrain::model
