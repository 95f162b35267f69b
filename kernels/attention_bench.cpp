// sctrain bench attention: our sigmoid kernel vs at::scaled_dot_product_attention (cuDNN, flash).
// FlashAttention convention: B*N tokens and H*D width fixed; forward FLOPs 4*B*H*N^2*D, backward-only
// 2.5x that; padded batches count valid work only (sum over sequences of 4*H*len^2*D).
#include "kernels/attention_bench.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>

#include "kernels/attention.h"

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>
#endif

namespace sctrain::kernels {

#ifdef SCTRAIN_HAVE_CUDA_KERNELS
namespace {

using torch::Tensor;

// Median milliseconds of fn over reps runs (CUDA events around each), after warm-up.
double time_ms(const std::function<void()>& fn, int reps) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, at::cuda::getCurrentCUDAStream());
    fn();
    cudaEventRecord(b, at::cuda::getCurrentCUDAStream());
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

enum class Sdp { CuDNN, Flash };

void select_sdp(Sdp which) {
  auto& ctx = at::globalContext();
  ctx.setSDPUseMath(false);
  ctx.setSDPUseMemEfficient(false);
  ctx.setSDPUseFlash(which == Sdp::Flash);
  ctx.setSDPUseCuDNN(which == Sdp::CuDNN);
}
void restore_sdp() {
  auto& ctx = at::globalContext();
  ctx.setSDPUseMath(true);
  ctx.setSDPUseMemEfficient(true);
  ctx.setSDPUseFlash(true);
  ctx.setSDPUseCuDNN(true);
}

struct Row {
  std::string impl;
  int d, n, b, h;
  bool padded;
  double fwd_ms, bwd_ms, fwd_tflops, bwd_tflops;
};

// Times forward and backward-only of f(q, k, v) with q, k, v views of one [B, N, 3, H, D] tensor.
// Returns false when the implementation refuses the inputs.
bool time_impl(const std::function<Tensor(const Tensor&, const Tensor&, const Tensor&)>& f, const Tensor& qkv,
               int reps, double& fwd_ms, double& bwd_ms) {
  try {
    auto q = qkv.select(2, 0), k = qkv.select(2, 1), v = qkv.select(2, 2);
    {
      torch::NoGradGuard ng;
      fwd_ms = time_ms([&] { f(q, k, v); }, reps);
    }
    auto qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_(), vg = v.detach().requires_grad_();
    auto o = f(qg, kg, vg);
    auto dout = torch::randn_like(o);
    bwd_ms = time_ms([&] { torch::autograd::grad({o}, {qg, kg, vg}, {dout}, /*retain_graph=*/true); }, reps);
    return true;
  } catch (const std::exception& e) {
    std::printf("  (skipped: %.200s)\n", e.what());
    return false;
  }
}

}  // namespace
#endif

int run_attention_bench(const AttentionBenchOptions& opts) {
#ifdef SCTRAIN_HAVE_CUDA_KERNELS
  if (!torch::cuda::is_available()) {
    std::printf("bench attention: no CUDA device\n");
    return 1;
  }
  const auto dt = opts.fp16 ? torch::kHalf : torch::kBFloat16;
  const auto dev = torch::Device(torch::kCUDA);
  auto* prop = at::cuda::getCurrentDeviceProperties();
  std::printf("device: %s (sm_%d%d, %d SMs); %s; tokens %d, width %d; median of %d\n", prop->name, prop->major,
              prop->minor, prop->multiProcessorCount, opts.fp16 ? "fp16" : "bf16", opts.tokens, opts.width,
              opts.reps);
  std::vector<Row> rows;
  std::mt19937 rng(42);
  for (int d : opts.head_dims) {
    for (int n : opts.seqlens) {
      const int B = std::max(1, opts.tokens / n), H = opts.width / d;
      torch::manual_seed(n + d);
      auto qkv = torch::randn({B, n, 3, H, d}, torch::dtype(dt).device(dev));
      const double dense_flop = 4.0 * B * H * double(n) * n * d;
      auto full = torch::full({B}, n, torch::dtype(torch::kInt).device(dev));
      auto add = [&](const char* impl, bool padded, double flop, double fm, double bm) {
        rows.push_back({impl, d, n, B, H, padded, fm, bm, flop / fm * 1e-9, 2.5 * flop / bm * 1e-9});
      };
      double fm, bm;
      if (time_impl([&](const Tensor& q, const Tensor& k, const Tensor& v) {
            return sigmoid_attention(q, k, v, full);
          }, qkv, opts.reps, fm, bm))
        add("sigmoid (ours)", false, dense_flop, fm, bm);
      if (prop->major == 9) {  // the portable path too, on Hopper
        setenv("SCTRAIN_ATTENTION_PATH", "sm80", 1);
        if (time_impl([&](const Tensor& q, const Tensor& k, const Tensor& v) {
              return sigmoid_attention(q, k, v, full);
            }, qkv, opts.reps, fm, bm))
          add("sigmoid (ours, portable)", false, dense_flop, fm, bm);
        unsetenv("SCTRAIN_ATTENTION_PATH");
      }
      for (Sdp which : {Sdp::CuDNN, Sdp::Flash}) {
        select_sdp(which);
        auto sdpa = [](const Tensor& q, const Tensor& k, const Tensor& v) {
          return at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
        };
        if (time_impl(sdpa, qkv, opts.reps, fm, bm))
          add(which == Sdp::CuDNN ? "softmax cuDNN" : "softmax flash", false, dense_flop, fm, bm);
        restore_sdp();
      }
      if (opts.padded) {
        std::uniform_int_distribution<int> u(n / 2, n);
        std::vector<int32_t> lens(B);
        double valid_flop = 0;
        for (auto& l : lens) {
          l = u(rng);
          valid_flop += 4.0 * H * double(l) * l * d;
        }
        auto lt = torch::tensor(lens, torch::dtype(torch::kInt)).to(dev);
        if (time_impl([&](const Tensor& q, const Tensor& k, const Tensor& v) {
              return sigmoid_attention(q, k, v, lt);
            }, qkv, opts.reps, fm, bm))
          add("sigmoid (ours) padded", true, valid_flop, fm, bm);
        // cuDNN softmax with a key-padding mask, for reference.
        select_sdp(Sdp::CuDNN);
        auto mask = (torch::arange(n, lt.options()).view({1, n}) < lt.view({B, 1})).view({B, 1, 1, n});
        auto masked = [&](const Tensor& q, const Tensor& k, const Tensor& v) {
          return at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask);
        };
        if (time_impl(masked, qkv, opts.reps, fm, bm)) add("softmax cuDNN+mask padded", true, valid_flop, fm, bm);
        restore_sdp();
      }
      torch::cuda::synchronize();
    }
  }

  std::printf("\n%-28s %4s %6s %3s %3s %9s %9s %9s %9s\n", "impl", "d", "N", "B", "H", "fwd ms", "bwd ms",
              "fwd TF/s", "bwd TF/s");
  for (const auto& r : rows)
    std::printf("%-28s %4d %6d %3d %3d %9.3f %9.3f %9.1f %9.1f\n", r.impl.c_str(), r.d, r.n, r.b, r.h, r.fwd_ms,
                r.bwd_ms, r.fwd_tflops, r.bwd_tflops);
  auto find = [&](const std::string& impl, int d, int n) -> const Row* {
    for (const auto& r : rows)
      if (r.impl == impl && r.d == d && r.n == n) return &r;
    return nullptr;
  };
  std::printf("\nratios (ours / other, by TFLOP/s): fwd, bwd\n");
  std::printf("%4s %6s %16s %16s %16s\n", "d", "N", "vs cuDNN", "vs flash", "padded/dense");
  for (int d : opts.head_dims)
    for (int n : opts.seqlens) {
      const Row* o = find("sigmoid (ours)", d, n);
      if (!o) continue;
      const Row* c = find("softmax cuDNN", d, n);
      const Row* f = find("softmax flash", d, n);
      const Row* p = find("sigmoid (ours) padded", d, n);
      auto cell = [](const Row* a, const Row* b) {
        char buf[32];
        if (a && b)
          std::snprintf(buf, sizeof buf, "%.2f / %.2f", a->fwd_tflops / b->fwd_tflops, a->bwd_tflops / b->bwd_tflops);
        else
          std::snprintf(buf, sizeof buf, "n/a");
        return std::string(buf);
      };
      std::printf("%4d %6d %16s %16s %16s\n", d, n, cell(o, c).c_str(), cell(o, f).c_str(), cell(p, o).c_str());
    }
  if (!opts.json.empty()) {
    FILE* fp = std::fopen(opts.json.c_str(), "w");
    if (!fp) throw std::runtime_error("bench attention: cannot write " + opts.json);
    std::fprintf(fp, "{\"device\":\"%s\",\"dtype\":\"%s\",\"results\":[", prop->name, opts.fp16 ? "fp16" : "bf16");
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      std::fprintf(fp,
                   "%s{\"impl\":\"%s\",\"d\":%d,\"n\":%d,\"b\":%d,\"h\":%d,\"padded\":%s,\"fwd_ms\":%.4f,"
                   "\"bwd_ms\":%.4f,\"fwd_tflops\":%.2f,\"bwd_tflops\":%.2f}",
                   i ? "," : "", r.impl.c_str(), r.d, r.n, r.b, r.h, r.padded ? "true" : "false", r.fwd_ms, r.bwd_ms,
                   r.fwd_tflops, r.bwd_tflops);
    }
    std::fprintf(fp, "]}\n");
    std::fclose(fp);
  }
  return 0;
#else
  (void)opts;
  std::printf("bench attention: built without CUDA\n");
  return 1;
#endif
}

}  // namespace sctrain::kernels
