// Sigmoid attention: the CUDA kernels against a float64 reference (GPU tests skip without a GPU),
// and the CPU fallback against the LibTorch reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"

namespace {

using sctrain::kernels::SigmoidAttentionOptions;
using torch::Tensor;

// Float64 reference: O = sigmoid(Q K^T scale + b) V over valid keys; padded query rows zero.
Tensor reference64(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int>& lens,
                   const SigmoidAttentionOptions& opts) {
  const int64_t B = q.size(0), N = q.size(1), D = q.size(3);
  const double scale = opts.scale.value_or(1.0 / std::sqrt(static_cast<double>(D)));
  auto opt = q.options().dtype(torch::kDouble);
  auto valid = torch::zeros({B, N}, opt);
  std::vector<double> bias(B);
  for (int64_t b = 0; b < B; ++b) {
    if (lens[b] > 0) valid[b].narrow(0, 0, lens[b]).fill_(1.0);
    bias[b] = opts.bias.value_or(-std::log(static_cast<double>(std::max(lens[b], 1))));
  }
  auto bt = torch::tensor(bias, opt).view({B, 1, 1, 1});
  auto qh = q.to(torch::kDouble).transpose(1, 2), kh = k.to(torch::kDouble).transpose(1, 2);
  auto vh = v.to(torch::kDouble).transpose(1, 2);
  auto p = torch::sigmoid(torch::matmul(qh, kh.transpose(-1, -2)) * scale + bt) * valid.view({B, 1, 1, N});
  auto o = torch::matmul(p, vh) * valid.view({B, 1, N, 1});
  return o.transpose(1, 2);
}

double rel_err(const Tensor& out, const Tensor& ref) {
  const double den = ref.norm().item<double>();
  const double num = (out.to(torch::kDouble) - ref).norm().item<double>();
  return den == 0 ? num : num / den;
}

// Fills freed allocator blocks of these byte sizes with NaN, so outputs that reuse them start poisoned.
void poison_allocator(int64_t bytes) {
  std::vector<Tensor> junk;
  for (int i = 0; i < 8; ++i)
    junk.push_back(torch::full({(bytes + 3) / 4}, NAN, torch::dtype(torch::kFloat).device(torch::kCUDA)));
  torch::cuda::synchronize();
}

struct Case {
  int B, N, H, D;
  torch::ScalarType dtype;
  std::vector<int> lens;
  bool fused = true;
  std::optional<double> scale, bias;
  bool nan_padding = false;  // Q, K, V rows past each length hold NaN (the reference sees zeros there)
  bool packed = false;       // through sigmoid_attention_packed on the fused tensor (needs fused)
};

void check_padding_zero(const Tensor& x, const std::vector<int>& lens, const char* what) {
  for (size_t b = 0; b < lens.size(); ++b) {
    auto pad = x[b].narrow(0, lens[b], x.size(1) - lens[b]);
    if (pad.numel() == 0) continue;
    EXPECT_EQ(pad.abs().max().item<double>(), 0.0) << what << ": padding of sequence " << b << " is not zero";
  }
}

// Checks O and the three gradients against the float64 reference; returns the largest relative error.
double run_case(const Case& c, uint64_t seed) {
  torch::manual_seed(seed);
  auto opt = torch::dtype(c.dtype).device(torch::kCUDA);
  Tensor qkv, q, k, v;
  if (c.fused) {
    qkv = torch::randn({c.B, c.N, 3, c.H, c.D}, opt);
    q = qkv.select(2, 0), k = qkv.select(2, 1), v = qkv.select(2, 2);
  } else {
    q = torch::randn({c.B, c.N, c.H, c.D}, opt);
    k = torch::randn({c.B, c.N, c.H, c.D}, opt);
    v = torch::randn({c.B, c.N, c.H, c.D}, opt);
  }
  Tensor q_ref = q.detach(), k_ref = k.detach(), v_ref = v.detach();
  if (c.nan_padding) {
    // Padding rows are never part of the result: NaN there must not reach O or any gradient.
    q_ref = q_ref.clone(), k_ref = k_ref.clone(), v_ref = v_ref.clone();
    for (int b = 0; b < c.B; ++b) {
      const int64_t pad = c.N - c.lens[b];
      if (pad == 0) continue;
      for (Tensor* x : {&q, &k, &v}) x->detach()[b].narrow(0, c.lens[b], pad).fill_(NAN);
      for (Tensor* x : {&q_ref, &k_ref, &v_ref}) (*x)[b].narrow(0, c.lens[b], pad).zero_();
    }
  }
  q = q.detach().requires_grad_(), k = k.detach().requires_grad_(), v = v.detach().requires_grad_();
  auto dout = torch::randn({c.B, c.N, c.H, c.D}, opt);
  auto lengths = torch::tensor(std::vector<int32_t>(c.lens.begin(), c.lens.end()),
                               torch::dtype(torch::kInt).device(torch::kCUDA));
  SigmoidAttentionOptions opts{c.scale, c.bias};
  if (!sctrain::kernels::sigmoid_attention_kernel_supports(q)) {
    ADD_FAILURE() << "the CUDA kernel does not take these inputs";
    return INFINITY;
  }

  const int64_t bytes = q.numel() * 4;
  poison_allocator(bytes);
  Tensor o;
  std::vector<Tensor> grads;
  if (c.packed) {
    qkv = qkv.detach().requires_grad_();
    o = sctrain::kernels::sigmoid_attention_packed(qkv, lengths, opts);
    poison_allocator(bytes);
    auto g = torch::autograd::grad({o}, {qkv}, {dout})[0];
    EXPECT_TRUE(g.is_contiguous()) << "the packed gradient is one [B, N, 3, H, D] tensor";
    grads = {g.select(2, 0), g.select(2, 1), g.select(2, 2)};
  } else {
    o = sctrain::kernels::sigmoid_attention(q, k, v, lengths, opts);
    poison_allocator(bytes);
    grads = torch::autograd::grad({o}, {q, k, v}, {dout});
  }
  torch::cuda::synchronize();

  auto q64 = q_ref.to(torch::kDouble).requires_grad_();
  auto k64 = k_ref.to(torch::kDouble).requires_grad_();
  auto v64 = v_ref.to(torch::kDouble).requires_grad_();
  auto o64 = reference64(q64, k64, v64, c.lens, opts);
  auto g64 = torch::autograd::grad({o64}, {q64, k64, v64}, {dout.to(torch::kDouble)});

  const double tol = c.dtype == torch::kBFloat16 ? 1.5e-2 : 4e-3;
  const char* names[] = {"dQ", "dK", "dV"};
  EXPECT_FALSE(o.isnan().any().item<bool>()) << "O has NaN (unwritten?)";
  double worst = rel_err(o.detach(), o64.detach());
  EXPECT_LT(worst, tol) << "O";
  check_padding_zero(o.detach(), c.lens, "O");
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(grads[i].isnan().any().item<bool>()) << names[i] << " has NaN (unwritten?)";
    const double e = rel_err(grads[i], g64[i]);
    EXPECT_LT(e, tol) << names[i];
    worst = std::max(worst, e);
    check_padding_zero(grads[i], c.lens, names[i]);
  }
  return worst;
}

const char* dtype_name(torch::ScalarType t) { return t == torch::kBFloat16 ? "bf16" : "fp16"; }

#define REQUIRE_GPU() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU"

void edge_cases(bool packed = false) {
  for (auto dt : {torch::kBFloat16, torch::kHalf})
    for (int d : {64, 128}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " d" + std::to_string(d) + (packed ? " packed" : ""));
      // length 1, odd, not a multiple of the tile, zero, full
      uint64_t seed = 1;
      for (Case c : {Case{5, 200, 2, d, dt, {1, 0, 199, 64, 200}}, Case{3, 129, 3, d, dt, {129, 65, 127}},
                     Case{2, 1, 1, d, dt, {1, 0}}, Case{2, 70, 2, d, dt, {0, 0}}}) {
        c.packed = packed;
        run_case(c, seed++);
      }
    }
}

// Sets an environment variable for its scope; the earlier value (or its absence) comes back after, so a
// whole test binary run under a switch keeps it past the tests that set their own.
class ScopedEnv {
 public:
  explicit ScopedEnv(const char* name) : name_(name) {
    if (const char* v = std::getenv(name)) {
      old_ = v;
      had_ = true;
    }
  }
  void set(const char* value) { setenv(name_, value, 1); }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// Runs fn on the device's default kernel path, then on the portable one (SCTRAIN_ATTENTION_PATH).
template <typename F>
void on_both_paths(F fn) {
  ScopedEnv env("SCTRAIN_ATTENTION_PATH");
  for (const char* path : {"default", "sm80"}) {
    SCOPED_TRACE(path);
    env.set(path);
    fn(path);
  }
}

TEST(SigmoidAttentionGpu, EdgeLengths) {
  REQUIRE_GPU();
  edge_cases();
}

// The portable (mma.sync) path also on devices where the Hopper path is the default.
TEST(SigmoidAttentionGpu, PortablePathEdgeLengths) {
  REQUIRE_GPU();
  ScopedEnv env("SCTRAIN_ATTENTION_PATH");
  env.set("sm80");
  edge_cases();
  run_case({2, 1000, 2, 64, torch::kBFloat16, {513, 1000}}, 9);
}

// q, k, v packed in one tensor: dK and dV go straight into the packed gradient, on both paths.
TEST(SigmoidAttentionGpu, PackedQkvEdgeLengths) {
  REQUIRE_GPU();
  on_both_paths([](const char*) {
    edge_cases(/*packed=*/true);
    Case c{3, 300, 2, 64, torch::kBFloat16, {77, 256, 300}};
    c.nan_padding = c.packed = true;
    run_case(c, 23);
  });
}

// Small enough for compute-sanitizer (scripts/gpu.sh kernels-sanitize).
TEST(SigmoidAttentionGpu, SmallForSanitizer) {
  REQUIRE_GPU();
  run_case({2, 150, 2, 64, torch::kBFloat16, {150, 37}}, 11);
  run_case({2, 150, 1, 128, torch::kHalf, {0, 129}}, 12);
}

TEST(SigmoidAttentionGpu, RandomShapes) {
  REQUIRE_GPU();
  std::mt19937 rng(1234);
  for (int it = 0; it < 16; ++it) {
    Case c;
    c.B = 1 + rng() % 3;
    c.N = 1 + rng() % 300;
    c.H = 1 + rng() % 4;
    c.D = rng() % 2 ? 64 : 128;
    c.dtype = rng() % 2 ? torch::kBFloat16 : torch::kHalf;
    for (int b = 0; b < c.B; ++b) c.lens.push_back(static_cast<int>(rng() % (c.N + 1)));
    c.fused = rng() % 4 != 0;
    c.packed = c.fused && rng() % 2;
    if (rng() % 3 == 0) c.bias = -1.5;
    if (rng() % 3 == 0) c.scale = 0.1;
    SCOPED_TRACE("B" + std::to_string(c.B) + " N" + std::to_string(c.N) + " H" + std::to_string(c.H) +
                 " d" + std::to_string(c.D) + " " + dtype_name(c.dtype));
    run_case(c, 100 + it);
  }
}

// Loads stop at each sequence's length (a partial last key block is zero-filled, never read past it).
TEST(SigmoidAttentionGpu, NanInPaddingDoesNotLeak) {
  REQUIRE_GPU();
  on_both_paths([](const char*) {
    for (int d : {64, 128}) {
      Case c{3, 300, 2, d, torch::kBFloat16, {77, 256, 300}};
      c.nan_padding = true;
      run_case(c, 21);
      Case f{2, 257, 1, d, torch::kHalf, {128, 1}};
      f.nan_padding = true;
      f.fused = false;
      run_case(f, 22);
    }
  });
}

// The d64 forward's two block shapes (128 query rows, two blocks per SM; 256 rows, one block), each
// forced at lengths where the other is the default: edge lengths, NaN in padding, many tiles, 8K.
TEST(SigmoidAttentionGpu, BothForwardBlockShapes) {
  REQUIRE_GPU();
  ScopedEnv rows("SCTRAIN_ATTENTION_FWD_ROWS");
  rows.set("256");
  edge_cases();
  Case c{3, 300, 2, 64, torch::kBFloat16, {77, 256, 300}};
  c.nan_padding = true;
  run_case(c, 51);
  std::mt19937 rng(78);
  Case m{12, 700, 16, 64, torch::kHalf, {700, 0, 1, 255}};
  while (static_cast<int>(m.lens.size()) < m.B) m.lens.push_back(static_cast<int>(rng() % 701));
  m.nan_padding = true;
  run_case(m, 52);
  rows.set("128");
  run_case({1, 8192, 2, 64, torch::kBFloat16, {7001}}, 53);
}

TEST(SigmoidAttentionGpu, LongerSequences) {
  REQUIRE_GPU();
  run_case({2, 1024, 2, 128, torch::kBFloat16, {1024, 777}}, 7);
  run_case({2, 1000, 2, 64, torch::kHalf, {513, 1000}}, 8);
}

// The model's longest sequences (configs/160m-8k-stress.yaml): with the default bias -log(8192) most
// probabilities are near 1e-4, where P = (1 + tanh) / 2 keeps only what the tanh approximation resolves
// next to -1. Both paths, the packed model layout at d64.
TEST(SigmoidAttentionGpu, ModelLength8K) {
  REQUIRE_GPU();
  on_both_paths([](const char* path) {
    Case c{1, 8192, 2, 64, torch::kBFloat16, {8192}};
    c.packed = true;
    const double e64 = run_case(c, 41);
    const double e128 = run_case({1, 8192, 1, 128, torch::kHalf, {6001}}, 42);
    std::printf("[ 8K ] %s path: largest relative error %.2e (d64 bf16), %.2e (d128 fp16)\n", path, e64, e128);
  });
}

// Many more query tiles than SMs (several waves of blocks), lengths of every kind with NaN in the
// padding, and a batch of 300 short sequences.
TEST(SigmoidAttentionGpu, ManyTilesAndSequences) {
  REQUIRE_GPU();
  std::mt19937 rng(77);
  for (int d : {128, 64}) {
    Case c{12, 700, 16, d, torch::kBFloat16, {700, 0, 1, 129}};
    while (static_cast<int>(c.lens.size()) < c.B) c.lens.push_back(static_cast<int>(rng() % 701));
    c.nan_padding = true;
    SCOPED_TRACE("d" + std::to_string(d));
    run_case(c, 31);
  }
  Case many{300, 130, 1, 128, torch::kHalf, {}};
  for (int b = 0; b < many.B; ++b) many.lens.push_back(static_cast<int>(rng() % 131));
  run_case(many, 32);
}

TEST(SigmoidAttentionCpu, FallsBackToReference) {
  torch::manual_seed(0);
  auto q = torch::randn({2, 9, 2, 64}, torch::kFloat).requires_grad_();
  auto k = torch::randn({2, 9, 2, 64}, torch::kFloat);
  auto v = torch::randn({2, 9, 2, 64}, torch::kFloat);
  auto lengths = torch::tensor({9, 4}, torch::kInt);
  EXPECT_FALSE(sctrain::kernels::sigmoid_attention_kernel_supports(q));
  auto o = sctrain::kernels::sigmoid_attention(q, k, v, lengths);
  auto ref = reference64(q.detach(), k, v, {9, 4}, {});
  EXPECT_LT(rel_err(o.detach(), ref), 1e-5);
  o.sum().backward();
  EXPECT_TRUE(q.grad().defined());

  auto qkv = torch::stack({q.detach(), k, v}, 2).requires_grad_();
  auto packed = sctrain::kernels::sigmoid_attention_packed(qkv, lengths);
  EXPECT_TRUE(torch::equal(packed, o.detach()));
  packed.sum().backward();
  EXPECT_TRUE(torch::allclose(qkv.grad().select(2, 0), q.grad()));
}

}  // namespace
