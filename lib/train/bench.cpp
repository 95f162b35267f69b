// bench train: steady-state training throughput on synthetic full-length sequences.
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "model/model.h"
#include "train/engine.h"
#include "train/trainer.h"
#include "util/json.h"
#include "util/log.h"

namespace sctrain::train {

namespace {

data::Batch synthetic_batch(int64_t B, int64_t L, int64_t vocab, int64_t n_bins, std::mt19937_64& rng) {
  data::Batch b;
  b.batch_size = B;
  b.seq_len = L;
  b.tokens.resize(B * L);
  b.labels.assign(B * L, data::kIgnoreLabel);
  b.lengths.assign(B, static_cast<int32_t>(L));
  if (n_bins > 0) b.bins.resize(B * L);
  std::uniform_int_distribution<int32_t> gene(data::kNumSpecial, static_cast<int32_t>(vocab - 1));
  std::uniform_int_distribution<int32_t> bin(1, static_cast<int32_t>(std::max<int64_t>(1, n_bins - 1)));
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t i = 0; i < B; ++i) {
    b.cell_ids.push_back(i);
    for (int64_t j = 0; j < L; ++j) {
      const int64_t k = i * L + j;
      b.tokens[k] = j == 0 ? data::kCls : gene(rng);
      if (n_bins > 0) b.bins[k] = j == 0 ? 0 : bin(rng);
      if (j > 0 && u(rng) < 0.15) {
        b.labels[k] = b.tokens[k];
        b.tokens[k] = data::kMask;
      }
    }
  }
  return b;
}

// Steps first .. first+n-1 as the trainer runs them: each step's statistics are collected
// after the next step's forward and backward are queued (Engine::collect). sync: collect
// each step right after its update and wait for the GPU to finish it (the host-synchronous
// loop that trainers had before; for A/B measurements). Returns the last step's statistics
// and adds every step's FLOPs and tokens.
template <class Micro>
StepStats run_steps(Engine& engine, Micro&& micro, int64_t first, int64_t n, bool sync,
                    double* flops = nullptr, int64_t* tokens = nullptr) {
  StepStats last;
  auto take = [&](StepStats s) {
    if (flops) *flops += s.flops;
    if (tokens) *tokens += s.tokens;
    last = std::move(s);
  };
  for (int64_t i = 0; i < n; ++i) {
    engine.forward_backward(micro(first + i));
    if (engine.pending() > 0) take(engine.collect());
    engine.update();
    if (sync) {
      take(engine.collect());
      engine.synchronize();
    }
  }
  if (engine.pending() > 0) take(engine.collect());
  return last;
}

// SCTRAIN_PROFILE=n: Kineto over n more steps; prints GPU time per kernel name, the
// GPU busy time and the wall time per step.
template <class Micro>
void profile_steps(Engine& engine, Micro&& micro, int n, bool sync) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  if (n <= 0) return;
  prof::ProfilerConfig pc(torch::profiler::impl::ProfilerState::KINETO, /*report_input_shapes=*/true);
  const std::set<ActivityType> acts{ActivityType::CPU, ActivityType::CUDA};
  prof::prepareProfiler(pc, acts);
  prof::enableProfiler(pc, acts);
  const auto t0 = std::chrono::steady_clock::now();
  run_steps(engine, micro, 1000, n, sync);
  engine.synchronize();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto result = prof::disableProfiler();
  // CPU op (name, input shapes and dtypes) by correlation id: which op launched a kernel.
  std::map<uint64_t, std::string> op_of;
  for (const auto& ev : result->events()) {
    if (ev.deviceType() != c10::DeviceType::CPU) continue;
    std::string d = ev.name();
    if (ev.hasShapes()) {
      auto sh = ev.shapes();
      auto ty = ev.hasTypes() ? ev.dtypes() : c10::ArrayRef<std::string>();
      for (size_t i = 0; i < sh.size(); ++i) {
        d += " [";
        for (size_t j = 0; j < sh[i].size(); ++j) d += (j ? "," : "") + std::to_string(sh[i][j]);
        d += "]";
        if (i < ty.size()) d += ty[i].substr(0, 8);
      }
    }
    op_of[ev.correlationId()] = d;
  }
  std::map<std::string, std::map<std::string, double>> ops_of_kernel;  // kernel -> op -> ns
  std::map<std::string, std::pair<double, int64_t>> by_name;  // ns, count
  double busy = 0;
  uint64_t first = UINT64_MAX, last = 0;
  for (const auto& ev : result->events()) {
    if (ev.deviceType() != c10::DeviceType::CUDA) continue;
    const double ns = static_cast<double>(ev.durationNs());
    auto it = op_of.find(ev.linkedCorrelationId());
    const std::string kernel = ev.name().substr(0, 110);
    ops_of_kernel[kernel][it == op_of.end() ? "?" : it->second.substr(0, 200)] += ns;
    auto& slot = by_name[kernel];
    slot.first += ns;
    slot.second += 1;
    busy += ns;
    first = std::min<uint64_t>(first, ev.startNs());
    last = std::max<uint64_t>(last, ev.endNs());
  }
  std::vector<std::pair<double, std::string>> rows;
  for (const auto& [k, v] : by_name) rows.emplace_back(v.first, k);
  std::sort(rows.rbegin(), rows.rend());
  std::printf("profile: %d steps, wall %.2f ms/step, GPU kernels %.2f ms/step, GPU span %.2f ms/step, %zu kernel names\n",
              n, wall * 1e3 / n, busy * 1e-6 / n, (last - first) * 1e-6 / n, rows.size());
  for (size_t i = 0; i < rows.size() && i < 45; ++i)
    std::printf("  %8.3f ms %5.1f%% x%-5lld %s\n", rows[i].first * 1e-6 / n, 100.0 * rows[i].first / busy,
                static_cast<long long>(by_name[rows[i].second].second / n), rows[i].second.c_str());
  // The ops behind the 15 costliest kernels.
  for (size_t i = 0; i < rows.size() && i < 15; ++i) {
    std::vector<std::pair<double, std::string>> ops;
    for (const auto& [op, ns] : ops_of_kernel[rows[i].second]) ops.emplace_back(ns, op);
    std::sort(ops.rbegin(), ops.rend());
    std::printf("kernel %s\n", rows[i].second.substr(0, 70).c_str());
    for (size_t j = 0; j < ops.size() && j < 4; ++j)
      std::printf("    %8.3f ms  %s\n", ops[j].first * 1e-6 / n, ops[j].second.c_str());
  }
  std::fflush(stdout);
}

}  // namespace

int bench_train(Config cfg, const BenchOptions& o) {
  cfg.model.vocab_size = o.vocab_size;
  cfg.model.max_len = std::max(cfg.model.max_len, o.seq_len);
  cfg.model.n_bins = cfg.data.mode == "binned" ? cfg.data.n_bins : 0;
  cfg.train.max_steps = std::max<int64_t>(cfg.train.max_steps, o.warmup + o.steps);
  cfg.train.batch_size = o.batch_size;
  validate(cfg);

  // A/B switches (same binary): SCTRAIN_BENCH_SYNC=1 waits for the GPU after every step;
  // SCTRAIN_BF16_LN=0 runs the LayerNorms that feed GEMMs in float32 (autocast's policy),
  // SCTRAIN_BF16_LN=nosplit in bf16 but without model::split_for_bf16_norm;
  // SCTRAIN_FUSED_ADD_LN=0 runs the pre-LN residual adds and norms as separate ops;
  // SCTRAIN_DIRECT_WGRAD=0 casts the linear layers' bf16 weight gradients to float32 (autocast's way);
  // SCTRAIN_FUSED_GELU=0 runs the feed-forward's GELU and its bias gradient as LibTorch ops;
  // SCTRAIN_PACKED_QKV=0 gives the sigmoid kernel q, k, v views (their gradients stacked by autograd);
  // SCTRAIN_CACHED_CASTS=0 casts each weight to bf16 at every use;
  // SCTRAIN_ADAMW_CASTS=0 runs ATen's fused AdamW, the kept copies recast in the next forward;
  // SCTRAIN_FUSED_CE=0 runs LibTorch's float32 cross-entropy on a float32 copy of the logits;
  // SCTRAIN_LT_EPILOGUES=0 runs the tanh-GELU feed-forward on ATen's ops (model::set_lt_epilogues);
  // SCTRAIN_BIAS_IN_NORM=0 adds proj's and fc2's biases in their GEMMs (model::set_branch_bias_in_norm).
  auto env_is = [](const char* name, const char* value) {
    const char* e = std::getenv(name);
    return e != nullptr && std::string(e) == value;
  };
  const bool sync = env_is("SCTRAIN_BENCH_SYNC", "1");
  std::string layer_norm = "bf16+split";
  if (env_is("SCTRAIN_BF16_LN", "0")) {
    model::set_bf16_layer_norm(false);
    layer_norm = "float32";
  } else if (env_is("SCTRAIN_BF16_LN", "nosplit")) {
    model::set_split_norm_input(false);
    layer_norm = "bf16";
  }
  if (env_is("SCTRAIN_FUSED_ADD_LN", "0")) {
    model::set_fused_add_layer_norm(false);
  } else if (layer_norm != "float32") {
    layer_norm += "+fused add";
  }
  const bool direct_wgrad = !env_is("SCTRAIN_DIRECT_WGRAD", "0");
  model::set_direct_weight_grads(direct_wgrad);
  model::set_fused_gelu(!env_is("SCTRAIN_FUSED_GELU", "0"));
  model::set_packed_qkv_attention(!env_is("SCTRAIN_PACKED_QKV", "0"));
  model::set_cached_weight_casts(!env_is("SCTRAIN_CACHED_CASTS", "0"));
  set_adamw_writes_casts(!env_is("SCTRAIN_ADAMW_CASTS", "0"));
  model::set_fused_cross_entropy(!env_is("SCTRAIN_FUSED_CE", "0"));
  model::set_lt_epilogues(!env_is("SCTRAIN_LT_EPILOGUES", "0"));
  model::set_branch_bias_in_norm(!env_is("SCTRAIN_BIAS_IN_NORM", "0"));
  std::string status = "ok";
  double tps = 0, tflops = 0, mem = -1, step_ms = 0, loss = 0;
  int64_t params = 0;
  std::string device;
  try {
    Engine engine(cfg);
    params = engine.num_parameters();
    if (!engine.autocast() || !engine.device().is_cuda()) layer_norm = "float32";
    device = engine.device().str();
    log::info(str("bench train: ", cfg.model.n_layers, "x", cfg.model.d_model, " (", params, " parameters), ",
                  cfg.model.attention, " attention, ", cfg.model.activation, ", ", o.batch_size, " x ", o.seq_len,
                  " tokens, grad_accum ", cfg.train.grad_accum, ", ", device,
                  engine.autocast() ? " bf16 autocast" : " fp32",
                  cfg.train.max_grad_norm > 0 ? "" : ", no gradient clipping",
                  engine.autocast() && engine.device().is_cuda() ? str(", ", layer_norm, " LayerNorm") : "",
                  sync ? ", host sync after every step" : ""));
    std::mt19937_64 rng(static_cast<uint64_t>(cfg.train.seed));
    // A few distinct batches, reused: generating them is not what we measure.
    std::vector<data::Batch> pool;
    for (int i = 0; i < 4; ++i) pool.push_back(synthetic_batch(o.batch_size, o.seq_len, o.vocab_size, cfg.model.n_bins, rng));
    auto micro = [&](int64_t step) {
      std::vector<data::Batch> m;
      for (int64_t a = 0; a < cfg.train.grad_accum; ++a) m.push_back(pool[(step * cfg.train.grad_accum + a) % pool.size()]);
      return m;
    };
    run_steps(engine, micro, 0, o.warmup, sync);
    engine.synchronize();
    engine.reset_peak_memory();
    double flops = 0;
    int64_t tokens = 0;
    const auto t0 = std::chrono::steady_clock::now();
    loss = run_steps(engine, micro, o.warmup, o.steps, sync, &flops, &tokens).loss;
    engine.synchronize();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (const char* e = std::getenv("SCTRAIN_PROFILE")) profile_steps(engine, micro, std::atoi(e), sync);
    tps = static_cast<double>(tokens) / secs;
    tflops = flops / secs / 1e12;
    mem = engine.peak_memory_gib();
    step_ms = secs / static_cast<double>(o.steps) * 1e3;
  } catch (const c10::OutOfMemoryError& e) {
    status = "oom";
    log::error(str("bench train: out of memory: ", e.what_without_backtrace()));
  }

  json::Writer w;
  w.begin_object()
      .field("impl", "sctrain")
      .field("status", status)
      .field("attention", cfg.model.attention)
      .field("activation", cfg.model.activation)
      .field("n_layers", cfg.model.n_layers)
      .field("d_model", cfg.model.d_model)
      .field("params", params)
      .field("batch_size", o.batch_size)
      .field("seq_len", o.seq_len)
      .field("grad_accum", cfg.train.grad_accum)
      .field("clip", cfg.train.max_grad_norm > 0)
      .field("host_sync", sync)
      .field("layer_norm", layer_norm)
      .field("weight_grads", direct_wgrad ? "float32 from the GEMM" : "bf16, cast")
      .field("device", device)
      .field("steps", o.steps)
      .field("step_ms", step_ms)
      .field("tokens_per_s", tps)
      .field("tflops", tflops);
  if (mem >= 0) w.field("mem_peak_gib", mem);
  else w.key("mem_peak_gib").null();
  w.field("loss", loss).end_object();
  std::printf("%s\n", w.str().c_str());
  std::fflush(stdout);
  if (!o.json_out.empty()) std::ofstream(o.json_out, std::ios::app) << w.str() << "\n";
  return status == "ok" ? 0 : 1;
}

}  // namespace sctrain::train
