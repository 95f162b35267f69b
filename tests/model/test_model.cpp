// The encoder: shapes, gradients, parameter counts, the masked-only head, padding
// invariance (softmax and sigmoid), and the sigmoid reference against float64 loops.
#include <gtest/gtest.h>
#include <ATen/autocast_mode.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <tuple>

#include "data/batch.h"
#include "kernels/attention.h"
#include "model/model.h"

using namespace sctrain;
using model::Model;
using model::ModelConfig;

namespace {

ModelConfig tiny(const std::string& attention = "softmax") {
  ModelConfig c;
  c.vocab_size = 40;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.d_ff = 32;
  c.max_len = 16;
  c.attention = attention;
  return c;
}

// A right-padded batch with these lengths; every 3rd gene masked.
data::Batch make_batch(const std::vector<int32_t>& lengths, int32_t vocab, int64_t n_bins = 0, uint64_t seed = 1) {
  data::Batch b;
  b.batch_size = static_cast<int64_t>(lengths.size());
  b.seq_len = *std::max_element(lengths.begin(), lengths.end());
  b.lengths = lengths;
  b.tokens.assign(b.batch_size * b.seq_len, data::kPad);
  b.labels.assign(b.batch_size * b.seq_len, data::kIgnoreLabel);
  if (n_bins) b.bins.assign(b.batch_size * b.seq_len, 0);
  uint64_t x = seed;
  auto next = [&]() { x = x * 6364136223846793005ULL + 1442695040888963407ULL; return static_cast<int32_t>(x >> 33); };
  for (int64_t i = 0; i < b.batch_size; ++i) {
    b.cell_ids.push_back(i);
    for (int32_t j = 0; j < lengths[i]; ++j) {
      auto k = i * b.seq_len + j;
      b.tokens[k] = j == 0 ? data::kCls : data::kNumSpecial + next() % (vocab - data::kNumSpecial);
      if (n_bins && j > 0) b.bins[k] = 1 + next() % (n_bins - 1);
      if (j > 0 && j % 3 == 0) {
        b.labels[k] = b.tokens[k];
        b.tokens[k] = data::kMask;
      }
    }
  }
  return b;
}

}  // namespace

TEST(Model, ShapesAndParameterCount) {
  for (std::string attn : {"softmax", "sigmoid"})
    for (std::string norm : {"pre", "post"})
      for (int extras = 0; extras < 2; ++extras) {
        torch::manual_seed(0);
        ModelConfig c = tiny(attn);
        c.norm = norm;
        c.qk_norm = extras;
        c.layer_scale = extras ? 0.1 : 0.0;
        c.position_embedding = extras;
        c.n_bins = extras ? 8 : 0;
        Model m(c);
        EXPECT_EQ(m->num_parameters(), model::count_parameters(c)) << attn << " " << norm << " " << extras;
        auto b = make_batch({7, 12, 4}, 40, c.n_bins);
        auto in = model::to_inputs(b, torch::kCPU);
        auto h = m->forward(in);
        EXPECT_EQ(h.sizes(), (std::vector<int64_t>{3, 12, 16}));
        auto out = m->mlm(h, in);
        int64_t masked = 0;
        for (auto l : b.labels) masked += l != data::kIgnoreLabel;
        EXPECT_EQ(out.n_masked, masked);
        EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{masked, 40}));
        EXPECT_EQ(model::ModelImpl::cell_embedding(h).sizes(), (std::vector<int64_t>{3, 16}));
        EXPECT_TRUE(std::isfinite(out.loss.item<double>()));
      }
}

TEST(Model, EveryParameterGetsAFiniteGradient) {
  for (std::string attn : {"softmax", "sigmoid"}) {
    torch::manual_seed(0);
    ModelConfig c = tiny(attn);
    c.qk_norm = true;
    c.layer_scale = 0.5;
    c.n_bins = 6;
    c.position_embedding = true;
    Model m(c);
    auto in = model::to_inputs(make_batch({9, 16, 5}, 40, 6), torch::kCPU);
    m->mlm(m->forward(in), in).loss.backward();
    for (const auto& p : m->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << attn << " " << p.key();
      EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << attn << " " << p.key();
    }
  }
}

// Central differences in float64 against autograd, for a few entries of each module kind.
TEST(Model, GradientsMatchFiniteDifferences) {
  for (std::string attn : {"softmax", "sigmoid"}) {
    torch::manual_seed(1);
    ModelConfig c = tiny(attn);
    c.qk_norm = true;
    c.layer_scale = 0.5;
    c.activation = attn == "softmax" ? "gelu_tanh" : "gelu";  // both GELUs
    Model m(c);
    m->to(torch::kDouble);
    auto in = model::to_inputs(make_batch({6, 9}, 40), torch::kCPU);
    auto loss_fn = [&]() { return m->mlm(m->forward(in), in).loss.item<double>(); };
    m->zero_grad();
    m->mlm(m->forward(in), in).loss.backward();
    for (const std::string name : {"gene_emb.weight", "emb_norm.weight", "blocks.0.attn.qkv.weight",
                                   "blocks.0.attn.q_norm.weight", "blocks.1.attn.proj.bias",
                                   "blocks.0.ffn.fc1.weight", "blocks.1.ffn.fc2.weight", "blocks.0.gamma1",
                                   "final_norm.bias", "head_dense.weight", "head_bias"}) {
      auto p = m->named_parameters()[name];
      auto flat = p.view({-1});
      auto grad = p.grad().view({-1});
      for (int64_t idx : {int64_t{0}, flat.numel() / 2 + 1, flat.numel() - 1}) {
        torch::NoGradGuard g;
        // The sigmoid reference computes in float32 even for float64 inputs (kernels/):
        // a larger step and tolerance there.
        const bool f32 = attn == "sigmoid";
        const double eps = f32 ? 1e-3 : 1e-6, orig = flat[idx].item<double>();
        flat[idx] = orig + eps;
        const double up = loss_fn();
        flat[idx] = orig - eps;
        const double down = loss_fn();
        flat[idx] = orig;
        const double fd = (up - down) / (2 * eps), ad = grad[idx].item<double>();
        EXPECT_NEAR(fd, ad, f32 ? 2e-5 + 2e-2 * std::abs(ad) : 1e-6 + 1e-4 * std::abs(ad)) << attn << " " << name << "[" << idx << "]";
      }
    }
  }
}

TEST(Model, MaskedOnlyHeadEqualsFullProjection) {
  torch::manual_seed(0);
  ModelConfig c = tiny();
  Model m(c);
  auto b = make_batch({10, 13}, 40);
  auto in = model::to_inputs(b, torch::kCPU);
  auto h = m->forward(in);
  auto out = m->mlm(h, in);
  // All positions projected, then gathered.
  auto full = torch::nn::functional::linear(m->head_norm(torch::gelu(m->head_dense(h))),
                                            m->gene_emb->weight, m->head_bias)
                  .reshape({-1, c.vocab_size});
  auto gathered = full.index_select(0, in.masked_positions);
  EXPECT_TRUE(torch::allclose(out.logits, gathered, 1e-5, 1e-6));
  EXPECT_NEAR(out.loss.item<double>(),
              torch::nn::functional::cross_entropy(gathered, in.masked_targets).item<double>(), 1e-5);
}

// Outputs of a sequence do not depend on the padding its batch adds.
TEST(Model, PaddingHasNoEffectOnUnpaddedOutputs) {
  for (std::string attn : {"softmax", "sigmoid"}) {
    torch::manual_seed(0);
    ModelConfig c = tiny(attn);
    c.qk_norm = true;
    Model m(c);
    m->eval();
    auto alone = make_batch({6}, 40, 0, 7);  // 6 tokens, unpadded: no mask at all
    auto both = make_batch({6, 11}, 40, 0, 7);
    // The first cell of `both` is the same cell as `alone`.
    for (int j = 0; j < 6; ++j) {
      both.tokens[j] = alone.tokens[j];
      both.labels[j] = alone.labels[j];
    }
    torch::NoGradGuard g;
    auto h1 = m->forward(model::to_inputs(alone, torch::kCPU));
    auto h2 = m->forward(model::to_inputs(both, torch::kCPU));
    auto a = h1.select(0, 0), b = h2.select(0, 0).narrow(0, 0, 6);
    EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-5)) << attn << " max diff " << (a - b).abs().max().item<double>();
  }
}

// The sigmoid reference against explicit float64 loops.
TEST(SigmoidAttention, ReferenceMatchesFloat64Loops) {
  torch::manual_seed(3);
  const int64_t B = 2, N = 7, H = 2, D = 4;
  auto fused = torch::randn({B, N, 3, H, D});
  auto q = fused.select(2, 0), k = fused.select(2, 1), v = fused.select(2, 2);  // strided views
  auto lengths = torch::tensor({7, 4}, torch::kInt);
  for (int fixed = 0; fixed < 2; ++fixed) {
    kernels::SigmoidAttentionOptions o;
    if (fixed) o.bias = -1.5;
    auto out = kernels::sigmoid_attention_reference(q, k, v, lengths, o);
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{B, N, H, D}));
    auto qd = q.to(torch::kDouble), kd = k.to(torch::kDouble), vd = v.to(torch::kDouble);
    auto qa = qd.accessor<double, 4>(), ka = kd.accessor<double, 4>(), va = vd.accessor<double, 4>();
    double max_err = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = lengths[b].item<int64_t>();
      const double bias = fixed ? -1.5 : -std::log(static_cast<double>(len));
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < N; ++i)
          for (int64_t d = 0; d < D; ++d) {
            double acc = 0;
            if (i < len)
              for (int64_t j = 0; j < len; ++j) {
                double s = 0;
                for (int64_t e = 0; e < D; ++e) s += qa[b][i][h][e] * ka[b][j][h][e];
                s = s / std::sqrt(static_cast<double>(D)) + bias;
                acc += 1.0 / (1.0 + std::exp(-s)) * va[b][j][h][d];
              }
            max_err = std::max(max_err, std::abs(acc - out[b][i][h][d].item<double>()));
          }
    }
    EXPECT_LT(max_err, 1e-5) << "fixed bias " << fixed;
  }
}

// Each module on its own: output shape, gradients reach every parameter and the input.
TEST(Modules, ShapesAndGradients) {
  torch::manual_seed(0);
  ModelConfig c = tiny();
  c.qk_norm = true;
  c.layer_scale = 0.2;
  auto x = torch::randn({2, 5, c.d_model}, torch::requires_grad());
  model::AttentionContext ctx;
  ctx.lengths = torch::tensor({5, 3}, torch::kInt);
  ctx.key_mask = (torch::arange(5, torch::kInt).unsqueeze(0) < ctx.lengths.unsqueeze(1)).view({2, 1, 1, 5});
  for (std::string attn : {"softmax", "sigmoid"}) {
    c.attention = attn;
    model::Attention a(c);
    model::FeedForward f(c);
    model::Block b(c);
    std::vector<std::pair<std::string, torch::nn::Module*>> mods{{"attention", a.ptr().get()},
                                                                 {"ffn", f.ptr().get()},
                                                                 {"block", b.ptr().get()}};
    std::vector<torch::Tensor> outs{a(x, ctx), f(x), b(x, ctx)};
    for (size_t i = 0; i < outs.size(); ++i) {
      EXPECT_EQ(outs[i].sizes(), x.sizes()) << attn << " " << mods[i].first;
      if (x.grad().defined()) x.mutable_grad().zero_();
      outs[i].narrow(1, 0, 3).pow(2).sum().backward();
      EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0) << mods[i].first;
      for (const auto& p : mods[i].second->named_parameters()) {
        ASSERT_TRUE(p.value().grad().defined()) << attn << " " << mods[i].first << " " << p.key();
        EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>());
      }
    }
  }
}

// The fast paths (linear on [B*N, d], unbind of the fused qkv) equal the plain forms
// (at::linear on [B, N, d], three selects), outputs and gradients.
TEST(Modules, FlattenedLinearAndUnbindMatchPlainForms) {
  torch::manual_seed(0);
  ModelConfig c = tiny();
  model::Attention a(c);
  model::FeedForward f(c);
  auto x = torch::randn({2, 5, c.d_model}, torch::requires_grad());
  model::AttentionContext ctx;
  ctx.lengths = torch::tensor({5, 5}, torch::kInt);
  auto plain_attention = [&](const torch::Tensor& in) {
    const int64_t H = c.n_heads, Dh = c.head_dim();
    auto fused = torch::nn::functional::linear(in, a->qkv->weight, a->qkv->bias).view({2, 5, 3, H, Dh});
    auto q = fused.select(2, 0).transpose(1, 2), k = fused.select(2, 1).transpose(1, 2),
         v = fused.select(2, 2).transpose(1, 2);
    auto o = at::scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape({2, 5, c.d_model});
    return torch::nn::functional::linear(o, a->proj->weight, a->proj->bias);
  };
  auto plain_ffn = [&](const torch::Tensor& in) {
    auto h = torch::gelu(torch::nn::functional::linear(in, f->fc1->weight, f->fc1->bias));
    return torch::nn::functional::linear(h, f->fc2->weight, f->fc2->bias);
  };
  std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs{{a(x, ctx), plain_attention(x)},
                                                             {f(x), plain_ffn(x)}};
  for (auto& [fast, plain] : pairs) {
    EXPECT_TRUE(torch::allclose(fast, plain, 1e-6, 1e-6));
    auto g = torch::randn_like(fast);
    auto gf = torch::autograd::grad({fast}, {x}, {g}, /*retain_graph=*/true)[0];
    auto gp = torch::autograd::grad({plain}, {x}, {g}, /*retain_graph=*/true)[0];
    EXPECT_TRUE(torch::allclose(gf, gp, 1e-6, 1e-6));
  }
}

// linear_gemm_grads (the CUDA path of the blocks' linear layers) equals at::linear: output and
// the gradients of input, weight and bias.
TEST(Modules, LinearGemmGradsMatchesLinear) {
  torch::manual_seed(0);
  auto x = torch::randn({7, 5}, torch::requires_grad());
  auto w = torch::randn({3, 5}, torch::requires_grad());
  auto b = torch::randn({3}, torch::requires_grad());
  auto g = torch::randn({7, 3});
  auto fast = model::linear_gemm_grads(x, w, b);
  auto plain = torch::nn::functional::linear(x, w, b);
  EXPECT_TRUE(torch::allclose(fast, plain, 1e-6, 1e-6));
  auto gf = torch::autograd::grad({fast}, {x, w, b}, {g});
  auto gp = torch::autograd::grad({plain}, {x, w, b}, {g});
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(gf[i], gp[i], 1e-5, 1e-6)) << i;
  // Only the weight needs a gradient: the others are skipped.
  auto x2 = torch::randn({7, 5});
  auto gw = torch::autograd::grad({model::linear_gemm_grads(x2, w, b.detach())}, {w}, {g})[0];
  EXPECT_TRUE(torch::allclose(gw, g.t().mm(x2), 1e-5, 1e-6));
}

// layer_norm_for_gemm off the CUDA bf16 path is the module itself (CPU, float32).
TEST(Modules, LayerNormForGemmOnCpuIsLayerNorm) {
  torch::manual_seed(0);
  torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({8}).eps(1e-5));
  {
    torch::NoGradGuard g;
    ln->weight.uniform_(0.5, 1.5);
    ln->bias.uniform_(-0.5, 0.5);
  }
  auto x = torch::randn({3, 5, 8});
  EXPECT_TRUE(torch::equal(model::layer_norm_for_gemm(ln, x), ln(x)));
  EXPECT_TRUE(model::bf16_layer_norm());  // on by default
}

// split_for_bf16_norm: (x, bf16(x)) whose backward sums the two gradients as autograd
// would (the same float32 values), aliasing x rather than copying it.
TEST(Modules, SplitForBf16NormGradients) {
  torch::manual_seed(0);
  auto x = torch::randn({4, 6}, torch::requires_grad());
  auto w1 = torch::randn({4, 6}), w2 = torch::randn({4, 6});
  for (int uses = 0; uses < 3; ++uses) {  // both outputs, the float32 one, the bf16 one
    auto [r, b] = model::split_for_bf16_norm(x);
    EXPECT_EQ(r.data_ptr(), x.data_ptr());
    EXPECT_EQ(b.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(b, x.detach().to(torch::kBFloat16)));
    auto x2 = x.detach().clone().requires_grad_();
    torch::Tensor loss, loss2;
    if (uses == 0) {
      loss = (r * w1).sum() + (b.to(torch::kFloat) * w2).sum();
      loss2 = (x2 * w1).sum() + (x2.to(torch::kBFloat16).to(torch::kFloat) * w2).sum();
    } else if (uses == 1) {
      loss = (r * w1).sum();
      loss2 = (x2 * w1).sum();
    } else {
      loss = (b.to(torch::kFloat) * w2).sum();
      loss2 = (x2.to(torch::kBFloat16).to(torch::kFloat) * w2).sum();
    }
    auto g = torch::autograd::grad({loss}, {x})[0];
    auto g2 = torch::autograd::grad({loss2}, {x2})[0];
    EXPECT_EQ(g.scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::equal(g, g2)) << uses;
  }
  EXPECT_THROW(model::split_for_bf16_norm(x.to(torch::kDouble)), c10::Error);
}

namespace {
struct CudaAutocast {
  CudaAutocast() {
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  }
  ~CudaAutocast() {
    at::autocast::set_autocast_enabled(at::kCUDA, false);
    at::autocast::clear_cache();
  }
};

// max |a - b| / max |b|
double rel_err(const torch::Tensor& a, const torch::Tensor& b) {
  auto ad = a.to(torch::kDouble), bd = b.to(torch::kDouble);
  return ((ad - bd).abs().max() / bd.abs().max().clamp_min(1e-30)).item<double>();
}
}  // namespace

// On CUDA under bf16 autocast, the pre-LN blocks' norms (and QK-norm, and the head's) run in
// bf16: the block's output and every gradient equal those of autocast's float32 LayerNorm
// within bf16 rounding.
TEST(Modules, Bf16LayerNormMatchesAutocastGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(0);
  ModelConfig c = tiny();
  c.d_model = 128;
  c.n_heads = 2;
  c.d_ff = 256;
  c.qk_norm = true;
  model::Block block(c);
  block->to(torch::kCUDA);
  {  // LayerNorm weights away from their initial 1 and 0, and the linear layers' biases from 0
    torch::NoGradGuard g;
    for (auto& p : block->named_parameters())
      if (p.key().find("norm") != std::string::npos || p.key().find("ln") != std::string::npos ||
          p.key().find(".bias") != std::string::npos)
        p.value().add_(torch::randn_like(p.value()) * 0.2);
  }
  auto x = (torch::randn({2, 64, c.d_model}) * 3 + 1).to(torch::kCUDA).requires_grad_();
  model::AttentionContext ctx;
  ctx.lengths = torch::full({2}, 64, torch::TensorOptions().dtype(torch::kInt).device(torch::kCUDA));
  auto g = torch::randn({2, 64, c.d_model}).to(torch::kCUDA);
  auto run = [&](bool bf16, bool split = true, bool fused = true, bool bias_in_norm = true) {
    model::set_bf16_layer_norm(bf16);
    model::set_split_norm_input(split);
    model::set_fused_add_layer_norm(fused);
    model::set_branch_bias_in_norm(bias_in_norm);
    std::vector<torch::Tensor> out;
    {
      CudaAutocast ac;
      out.push_back(block(x, ctx));
    }
    EXPECT_EQ(out[0].scalar_type(), torch::kFloat);  // the residual stream stays float32
    std::vector<torch::Tensor> wrt{x};
    for (const auto& p : block->parameters()) wrt.push_back(p);
    auto grads = torch::autograd::grad({out[0]}, wrt, {g});
    out.insert(out.end(), grads.begin(), grads.end());
    return out;
  };
  // fast: the fused add + norm kernel (with proj's and fc2's biases); unfused: the bf16 norms with
  // separate adds and casts; bias_gemm: the fused kernel, the biases in their GEMMs.
  auto ref = run(false), fast = run(true), unfused = run(true, true, false), nosplit = run(true, false, false),
       bias_gemm = run(true, true, true, false);
  model::set_bf16_layer_norm(true);
  model::set_split_norm_input(true);
  model::set_fused_add_layer_norm(true);
  model::set_branch_bias_in_norm(true);
  auto names = block->named_parameters();
  EXPECT_LT(rel_err(fast[0], ref[0]), 2e-2) << "output";
  EXPECT_LT(rel_err(fast[1], ref[1]), 3e-2) << "input gradient";
  double scale = 0;
  for (size_t i = 2; i < ref.size(); ++i) scale = std::max(scale, ref[i].abs().max().item<double>());
  for (size_t i = 2; i < fast.size(); ++i) {
    const auto& name = names[i - 2].key();
    EXPECT_EQ(fast[i].scalar_type(), torch::kFloat) << name;
    if (name == "attn.k_norm.bias") {
      // Softmax is unchanged by a vector added to every key: the true gradient is 0, and
      // both paths give rounding noise only.
      EXPECT_LT(fast[i].abs().max().item<double>(), 1e-2 * scale) << name;
      continue;
    }
    EXPECT_LT(rel_err(fast[i], ref[i]), 5e-2) << name;
  }
  // split_for_bf16_norm changes how the gradients are summed, not what they are; the fused
  // kernel (float32 weights, norm of the float32 sum) is within bf16 rounding of both.
  for (size_t i = 0; i < fast.size(); ++i) {
    const bool kb = i >= 2 && names[i - 2].key() == "attn.k_norm.bias";
    EXPECT_LT(rel_err(unfused[i], nosplit[i]), kb ? 1.0 : 1e-2) << i;
    if (kb) continue;  // rounding noise on both sides (above)
    EXPECT_LT(rel_err(fast[i], unfused[i]), i == 0 ? 2e-2 : i == 1 ? 3e-2 : 5e-2) << i;
    // The bias added in float32 after the GEMM's bf16 rounding instead of in its epilogue.
    EXPECT_LT(rel_err(fast[i], bias_gemm[i]), i == 0 ? 1e-2 : 2e-2) << i;
  }

  // The bf16 path makes bf16 norms: the output of ln1 feeds the qkv GEMM uncast.
  CudaAutocast ac;
  auto y = model::layer_norm_for_gemm(block->ln1, x);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  model::set_bf16_layer_norm(false);
  EXPECT_EQ(model::layer_norm_for_gemm(block->ln1, x).scalar_type(), torch::kFloat);
  model::set_bf16_layer_norm(true);
}

// A whole model: loss and gradients with the bf16 norms against autocast's float32 norms.
TEST(Model, Bf16LayerNormLossMatchesAutocastGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(0);
  ModelConfig c = tiny();
  c.d_model = 64;
  c.n_heads = 2;
  c.d_ff = 128;
  c.max_len = 64;
  c.vocab_size = 50;
  Model m(c);
  m->to(torch::kCUDA);
  auto in = model::to_inputs(make_batch({40, 64, 33}, 50), torch::kCUDA);
  auto run = [&](bool bf16, bool fused = true) {
    model::set_bf16_layer_norm(bf16);
    model::set_fused_add_layer_norm(fused);
    for (auto& p : m->parameters()) p.mutable_grad().reset();
    torch::Tensor loss;
    {
      CudaAutocast ac;
      loss = m->mlm(m->forward(in), in).loss;
    }
    loss.backward();
    std::vector<torch::Tensor> out{loss.detach()};
    for (auto& p : m->parameters()) out.push_back(p.grad().clone());
    return out;
  };
  auto ref = run(false), fast = run(true), unfused = run(true, false);
  model::set_bf16_layer_norm(true);
  model::set_fused_add_layer_norm(true);
  auto names = m->named_parameters();
  for (const auto* f : {&fast, &unfused}) {
    EXPECT_NEAR((*f)[0].item<double>(), ref[0].item<double>(), 5e-3 * ref[0].item<double>());
    for (size_t i = 1; i < f->size(); ++i) EXPECT_LT(rel_err((*f)[i], ref[i]), 5e-2) << names[i - 1].key();
  }
  EXPECT_NEAR(fast[0].item<double>(), unfused[0].item<double>(), 5e-3 * ref[0].item<double>());
  for (size_t i = 1; i < fast.size(); ++i) EXPECT_LT(rel_err(fast[i], unfused[i]), 5e-2) << names[i - 1].key();
}

// linear_gemm_grads under CUDA bf16 autocast: with the float32 weights cast inside (the
// default), the output and the input gradient equal those through autocast's weight cache
// bitwise, and the weight and bias gradients come out float32, within bf16 rounding of the
// cast ones (and closer to float64).
TEST(Modules, LinearGemmGradsFloat32WeightGradsGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(0);
  const auto opt = torch::TensorOptions().device(torch::kCUDA);
  auto x = torch::randn({300, 96}, opt).to(torch::kBFloat16).requires_grad_();
  auto w = (torch::randn({40, 96}, opt) * 0.1).requires_grad_();
  auto b = torch::randn({40}, opt).requires_grad_();
  auto g = torch::randn({300, 40}, opt).to(torch::kBFloat16);
  auto run = [&](bool direct) {
    model::set_direct_weight_grads(direct);
    torch::Tensor y;
    {
      CudaAutocast ac;
      y = model::linear_gemm_grads(x, w, b);
    }
    auto grads = torch::autograd::grad({y}, {x, w, b}, {g});
    grads.insert(grads.begin(), y);
    return grads;
  };
  auto direct = run(true), cast = run(false);
  model::set_direct_weight_grads(true);
  EXPECT_TRUE(torch::equal(direct[0], cast[0]));
  EXPECT_TRUE(torch::equal(direct[1], cast[1]));
  auto dw64 = g.to(torch::kDouble).t().mm(x.detach().to(torch::kDouble));
  auto db64 = g.to(torch::kDouble).sum(0);
  for (int i : {2, 3}) {
    EXPECT_EQ(direct[i].scalar_type(), torch::kFloat);
    EXPECT_LT(rel_err(direct[i], cast[i]), 8e-3) << i;
    EXPECT_LT(rel_err(direct[i], i == 2 ? dw64 : db64), 1e-5) << i;
  }
}

// linear_gelu's fused path (GEMM, our GELU kernel; GELU backward and bias gradient in one kernel)
// against float64 from the same bf16 pre-activation, and against the unfused ops.
TEST(Modules, LinearGeluMatchesFloat64Gpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(0);
  const auto opt = torch::TensorOptions().device(torch::kCUDA);
  // (rows, in, out): several rows per CTA, one row per CTA, out past one CTA's 2048 columns.
  for (auto [rows, in, out] : {std::tuple{3000, 96, 200}, std::tuple{1, 64, 64}, std::tuple{700, 64, 2056}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(in) + " -> " + std::to_string(out));
    torch::nn::Linear lin(torch::nn::LinearOptions(in, out));
    lin->to(torch::kCUDA);
    auto x = torch::randn({1, rows, in}, opt).to(torch::kBFloat16).requires_grad_();
    auto g = torch::randn({1, rows, out}, opt).to(torch::kBFloat16);
    auto run = [&](bool fused) {
      model::set_fused_gelu(fused);
      torch::Tensor y;
      {
        CudaAutocast ac;
        y = model::linear_gelu(lin, x);
      }
      model::set_fused_gelu(true);
      auto grads = torch::autograd::grad({y}, {x, lin->weight, lin->bias}, {g});
      grads.insert(grads.begin(), y);
      return grads;
    };
    auto fused = run(true), plain = run(false);
    // float64 from the bf16 pre-activation both paths compute.
    auto x2 = x.detach().view({rows, in});
    auto a = at::addmm(lin->bias.detach().to(torch::kBFloat16), x2, lin->weight.detach().to(torch::kBFloat16).t())
                 .to(torch::kDouble);
    auto cdf = 0.5 * (1 + torch::erf(a / std::sqrt(2.0)));
    auto da = g.view({rows, out}).to(torch::kDouble) * (cdf + a * torch::exp(-0.5 * a * a) / std::sqrt(2 * 3.14159265358979323846));
    const std::vector<torch::Tensor> ref = {a * cdf, da.mm(lin->weight.detach().to(torch::kBFloat16).to(torch::kDouble)),
                                            da.t().mm(x2.to(torch::kDouble)), da.sum(0)};
    const char* names[] = {"y", "dx", "dW", "db"};
    const double tol[] = {8e-3, 1e-2, 1e-2, 1e-4};  // bf16 outputs; db sums float32 terms
    for (int i = 0; i < 4; ++i) {
      EXPECT_LT(rel_err(fused[i].reshape(ref[i].sizes()), ref[i]), tol[i]) << names[i];
      EXPECT_LT(rel_err(fused[i], plain[i]), 1e-2) << names[i] << " against the unfused ops";
    }
    EXPECT_EQ(fused[2].scalar_type(), torch::kFloat);
    EXPECT_EQ(fused[3].scalar_type(), torch::kFloat);
  }
}

// The feed-forward with tanh GELU under CUDA bf16 autocast (GELU and its gradient in cuBLASLt's GEMM
// epilogues) against float64 from the same bf16 operands, and against the same node on ATen's ops
// (set_lt_epilogues(false)); without fc2's bias (add_b2 false), y less that bias and no gradient for it.
TEST(Modules, FeedForwardGeluTanhMatchesFloat64Gpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(0);
  const auto opt = torch::TensorOptions().device(torch::kCUDA);
  const auto bf = [](const torch::Tensor& t) { return t.detach().to(torch::kBFloat16).to(torch::kDouble); };
  for (auto [rows, d, f] : {std::tuple{3000, 96, 200}, std::tuple{1, 64, 64}, std::tuple{700, 128, 2056}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(d) + " -> " + std::to_string(f));
    torch::nn::Linear fc1(torch::nn::LinearOptions(d, f)), fc2(torch::nn::LinearOptions(f, d));
    fc1->to(torch::kCUDA);
    fc2->to(torch::kCUDA);
    auto x = torch::randn({1, rows, d}, opt).to(torch::kBFloat16).requires_grad_();
    auto g = torch::randn({1, rows, d}, opt).to(torch::kBFloat16);
    auto run = [&](bool lt, bool add_b2 = true) {
      model::set_lt_epilogues(lt);
      torch::Tensor y;
      {
        CudaAutocast ac;
        y = model::feed_forward(fc1, fc2, x, /*gelu_tanh=*/true, add_b2);
      }
      auto grads = torch::autograd::grad({y}, {x, fc1->weight, fc1->bias, fc2->weight, fc2->bias}, {g},
                                         /*retain_graph=*/std::nullopt, /*create_graph=*/false, /*allow_unused=*/true);
      model::set_lt_epilogues(true);
      grads.insert(grads.begin(), y);
      return grads;
    };
    auto lt = run(true), plain = run(false), no_b2 = run(true, false);
    // float64 from the bf16 operands and the bf16 pre-activation.
    auto x2 = bf(x).view({rows, d});
    auto g2 = g.to(torch::kDouble).view({rows, d});
    auto w1 = bf(fc1->weight), w2 = bf(fc2->weight);
    auto a = bf(at::addmm(bf(fc1->bias), x2, w1.t()));
    const double c = std::sqrt(2 / 3.14159265358979323846);
    auto t = torch::tanh(c * (a + 0.044715 * a.pow(3)));
    auto h = 0.5 * a * (1 + t);
    auto dh = g2.mm(w2);
    auto da = dh * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * c * (1 + 3 * 0.044715 * a * a));
    const std::vector<torch::Tensor> ref = {at::addmm(bf(fc2->bias), h, w2.t()), da.mm(w1), da.t().mm(x2), da.sum(0),
                                            g2.t().mm(h), g2.sum(0)};
    const char* names[] = {"y", "dx", "dW1", "db1", "dW2", "db2"};
    const double tol[] = {1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-5};  // bf16 h and da; db2 sums bf16 dy exactly
    for (int i = 0; i < 6; ++i) {
      EXPECT_LT(rel_err(lt[i].reshape(ref[i].sizes()), ref[i]), tol[i]) << names[i];
      EXPECT_LT(rel_err(lt[i], plain[i]), 2e-2) << names[i] << " against ATen's ops";
    }
    for (int i = 2; i < 6; ++i) EXPECT_EQ(lt[i].scalar_type(), torch::kFloat) << names[i];
    auto ref_no_b2 = ref[0] - bf(fc2->bias);
    EXPECT_LT(rel_err(no_b2[0].reshape(ref_no_b2.sizes()), ref_no_b2), 1e-2) << "y without fc2's bias";
    EXPECT_FALSE(no_b2[5].defined()) << "fc2's bias gradient is the caller's";
    for (int i = 1; i < 5; ++i) EXPECT_LT(rel_err(no_b2[i], lt[i]), 1e-6) << names[i] << " without fc2's bias";
  }
}

// The fused cross-entropy of bf16 logits against float64: the loss and the logits' gradient, for a
// vocabulary of 8k + 8 columns (vector loads) and an odd one (one at a time), large logits included;
// a target outside the vocabulary gives NaN.
TEST(Modules, FusedCrossEntropyMatchesFloat64Gpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(0);
  const auto opt = torch::TensorOptions().device(torch::kCUDA);
  for (auto [rows, V] : {std::pair{300, 32000}, std::pair{7, 8200}, std::pair{65, 13690}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(V));
    auto logits = (torch::randn({rows, V}, opt) * 4).to(torch::kBFloat16);
    logits.index_put_({0, 5}, 80.0);  // one dominant logit
    auto targets = torch::randint(0, V, {rows}, opt.dtype(torch::kLong));
    auto x = logits.clone().requires_grad_();
    auto loss = model::mean_cross_entropy(x, targets);
    loss.mul(3.0).backward();  // an upstream gradient other than 1
    auto x64 = logits.to(torch::kDouble).requires_grad_();
    auto ref = torch::nn::functional::cross_entropy(x64, targets);
    ref.mul(3.0).backward();
    EXPECT_EQ(loss.scalar_type(), torch::kFloat);
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5 * ref.item<double>());
    EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
    EXPECT_LT(rel_err(x.grad(), x64.grad()), 1e-2);  // bf16 gradient
    model::set_fused_cross_entropy(false);
    auto plain = model::mean_cross_entropy(logits, targets);
    model::set_fused_cross_entropy(true);
    EXPECT_NEAR(loss.item<double>(), plain.item<double>(), 1e-5 * plain.item<double>());
  }
  auto logits = torch::randn({4, 64}, opt).to(torch::kBFloat16);
  auto bad = torch::tensor({1, 2, 64, 3}, opt.dtype(torch::kLong));
  EXPECT_TRUE(std::isnan(model::mean_cross_entropy(logits, bad).item<double>()));
}

// add_layer_norm off the CUDA bf16 path is the add, then the norm (the model's CPU path).
TEST(Modules, AddLayerNormOnCpuIsAddThenNorm) {
  torch::manual_seed(0);
  torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({16}).eps(1e-5));
  auto r = torch::randn({3, 5, 16}), h = torch::randn({3, 5, 16});
  EXPECT_FALSE(model::fused_add_norm_path(r, h, ln));
  auto a = model::add_layer_norm(r, h, ln);
  EXPECT_TRUE(torch::equal(a.x, r + h));
  EXPECT_TRUE(torch::equal(a.y, ln(r + h)));
  auto b = model::add_layer_norm(r, torch::Tensor(), ln, /*for_gemm=*/false);
  EXPECT_TRUE(torch::equal(b.x, r));
  EXPECT_TRUE(torch::equal(b.y, ln(r)));
}

// The fused add + LayerNorm kernel against float64: x = r + h exactly as LibTorch's add, y and
// every gradient (r, h, weight, bias, with and without the residual stream's own gradient)
// within float32 (float32 outputs) or bf16 (bf16 outputs) rounding. Sizes cover partial lanes
// (d = 136), every vector count (d = 64..1024) and rows past one sweep of the backward's grid.
TEST(Modules, FusedAddLayerNormMatchesFloat64Gpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(0);
  const auto cuda = torch::kCUDA;
  struct Case {
    int64_t rows, d;
    torch::ScalarType h;  // kFloat, kBFloat16, or kDouble for "no h"
    bool for_gemm, with_dx_next;
    bool hb = false;  // the branch's bias added with h
  };
  const std::vector<Case> cases{{126, 136, torch::kBFloat16, true, true},  {64, 64, torch::kFloat, true, true},
                                {200, 512, torch::kDouble, true, true},    {8192, 1024, torch::kBFloat16, true, true},
                                {8192, 1024, torch::kBFloat16, false, false}, {130, 768, torch::kFloat, false, false},
                                {4100, 1024, torch::kDouble, true, true},  {126, 136, torch::kBFloat16, true, true, true},
                                {8192, 1024, torch::kBFloat16, true, true, true}, {130, 768, torch::kFloat, false, false, true}};
  for (const auto& cs : cases) {
    SCOPED_TRACE(testing::Message() << cs.rows << " x " << cs.d << " h " << cs.h << " gemm " << cs.for_gemm << " hb "
                                    << cs.hb);
    torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({cs.d}).eps(1e-5));
    ln->to(cuda);
    {
      torch::NoGradGuard g;
      ln->weight.uniform_(0.5, 1.5);
      ln->bias.uniform_(-0.5, 0.5);
    }
    const auto opt = torch::TensorOptions().device(cuda);
    auto r = (torch::randn({cs.rows, cs.d}, opt) * 2 + 0.5).requires_grad_();
    torch::Tensor h;
    if (cs.h != torch::kDouble) h = torch::randn({cs.rows, cs.d}, opt).to(cs.h).requires_grad_();
    torch::Tensor hb;
    if (cs.hb) hb = torch::randn({cs.d}, opt).requires_grad_();
    torch::Tensor x, y;
    {
      CudaAutocast ac;
      ASSERT_TRUE(model::fused_add_norm_path(r, h, ln));
      auto out = model::add_layer_norm(r, h, ln, cs.for_gemm, hb);
      x = out.x;
      y = out.y;
    }
    EXPECT_EQ(x.scalar_type(), torch::kFloat);
    EXPECT_EQ(y.scalar_type(), cs.for_gemm ? torch::kBFloat16 : torch::kFloat);
    EXPECT_TRUE(torch::equal(x, h.defined() ? (hb.defined() ? r + h + hb : r + h) : r));  // the same float32 adds
    // Upstream gradients: dy in y's dtype, dx_next float32.
    auto dy = torch::randn({cs.rows, cs.d}, opt).to(y.scalar_type());
    auto dxn = torch::randn({cs.rows, cs.d}, opt);
    std::vector<torch::Tensor> wrt{r};
    if (h.defined()) wrt.push_back(h);
    wrt.push_back(ln->weight);
    wrt.push_back(ln->bias);
    if (hb.defined()) wrt.push_back(hb);
    auto grads = cs.with_dx_next ? torch::autograd::grad({y, x}, wrt, {dy, dxn}) : torch::autograd::grad({y}, wrt, {dy});

    // float64 reference
    std::vector<torch::Tensor> wrt64;
    for (const auto& t : wrt) wrt64.push_back(t.detach().to(torch::kDouble).requires_grad_());
    auto x64 = h.defined() ? wrt64[0] + wrt64[1] : wrt64[0] * 1.0;
    if (hb.defined()) x64 = x64 + wrt64.back();
    const size_t nw = wrt64.size() - (hb.defined() ? 1 : 0);
    auto w64 = wrt64[nw - 2], b64 = wrt64[nw - 1];
    auto y64 = torch::layer_norm(x64, {cs.d}, w64, b64, 1e-5);
    auto grads64 = cs.with_dx_next
                       ? torch::autograd::grad({y64, x64}, wrt64, {dy.to(torch::kDouble), dxn.to(torch::kDouble)})
                       : torch::autograd::grad({y64}, wrt64, {dy.to(torch::kDouble)});
    EXPECT_LT(rel_err(y, y64), cs.for_gemm ? 8e-3 : 1e-5) << "y";
    for (size_t i = 0; i < wrt.size(); ++i) {
      EXPECT_EQ(grads[i].scalar_type(), wrt[i].scalar_type()) << i;
      const double tol = grads[i].scalar_type() == torch::kBFloat16 ? 8e-3 : 1e-4;
      EXPECT_LT(rel_err(grads[i], grads64[i]), tol) << "gradient " << i;
    }
  }
  // Off the path: not under autocast, the switch off, d not a multiple of 8.
  torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({64}));
  ln->to(cuda);
  auto r = torch::randn({4, 64}, torch::TensorOptions().device(cuda));
  EXPECT_FALSE(model::fused_add_norm_path(r, torch::Tensor(), ln));
  CudaAutocast ac;
  EXPECT_TRUE(model::fused_add_norm_path(r, torch::Tensor(), ln));
  model::set_fused_add_layer_norm(false);
  EXPECT_FALSE(model::fused_add_norm_path(r, torch::Tensor(), ln));
  model::set_fused_add_layer_norm(true);
  torch::nn::LayerNorm ln12(torch::nn::LayerNormOptions({12}));
  ln12->to(cuda);
  EXPECT_FALSE(model::fused_add_norm_path(torch::randn({4, 12}, torch::TensorOptions().device(cuda)), torch::Tensor(), ln12));
}
