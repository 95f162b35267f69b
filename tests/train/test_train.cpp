// The trainer: config errors, the schedule, loss falling on real data, exact resume,
// checkpoint pruning, NaN policies, SIGINT.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <sstream>
#include <thread>

#include <torch/cuda.h>

#include "model/model.h"
#include "test_data.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/engine.h"
#include "train/trainer.h"

using namespace sctrain;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("sctrain_test_train_" + std::to_string(::getpid())) / name;
  train::remove_tree(p);
  fs::create_directories(p);
  return p;
}

std::string write(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
  return p.string();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// A tiny model on pbmc68k_reduced (700 cells x 765 genes), one thread: seconds per run.
train::Config tiny_run(int64_t steps) {
  train::Config c;
  c.model.d_model = 32;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.d_ff = 64;
  c.model.max_len = 64;
  c.data.files = {sctrain::testing::project_data("pbmc68k_reduced.h5ad")};
  c.data.gene_table = "";
  c.data.threads = 1;
  c.train.max_steps = steps;
  c.train.batch_size = 16;
  c.train.lr = 3e-3;
  c.train.min_lr = 3e-4;
  c.train.warmup_steps = 3;
  c.train.threads = 1;
  c.train.device = "cpu";
  c.train.val_every = 0;
  c.train.checkpoint_every = 0;
  return c;
}

struct Line {
  int64_t step;
  std::string loss;  // as written: exact comparison
  double value;
};
std::vector<Line> loss_lines(const fs::path& metrics) {
  std::vector<Line> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    auto p = line.find("\"loss\":");
    if (p == std::string::npos) continue;
    auto e = line.find(',', p);
    Line l;
    l.step = std::stoll(line.substr(8, line.find(',') - 8));
    l.loss = line.substr(p + 7, e - p - 7);
    l.value = l.loss == "null" ? std::nan("") : std::stod(l.loss);
    out.push_back(l);
  }
  return out;
}

// The mean loss of lines [from, from + n).
double mean_loss(const std::vector<Line>& lines, size_t from, size_t n) {
  double sum = 0;
  for (size_t i = from; i < from + n; ++i) sum += lines[i].value;
  return sum / static_cast<double>(n);
}

// An engine-level run: a tiny model, synthetic batches (random genes, every 4th masked).
train::Config tiny_engine(const std::string& device, double max_grad_norm) {
  train::Config c;
  c.model.vocab_size = 60;
  c.model.d_model = 32;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.d_ff = 64;
  c.model.max_len = 32;
  c.model.qk_norm = true;
  c.train.max_steps = 20;
  c.train.lr = 3e-3;
  c.train.warmup_steps = 2;
  c.train.max_grad_norm = max_grad_norm;
  c.train.device = device;
  return c;
}

data::Batch synthetic_batch(int64_t B, int64_t L, int32_t vocab, uint64_t seed) {
  data::Batch b;
  b.batch_size = B;
  b.seq_len = L;
  b.lengths.assign(B, static_cast<int32_t>(L));
  b.labels.assign(B * L, data::kIgnoreLabel);
  uint64_t x = seed;
  for (int64_t i = 0; i < B * L; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    const int32_t g = data::kNumSpecial + static_cast<int32_t>((x >> 33) % (vocab - data::kNumSpecial));
    b.tokens.push_back(i % L == 0 ? data::kCls : g);
    if (i % L != 0 && i % 4 == 1) {
      b.labels[i] = g;
      b.tokens[i] = data::kMask;
    }
  }
  for (int64_t i = 0; i < B; ++i) b.cell_ids.push_back(i);
  return b;
}

double grad_norm_of(train::Engine& e) {
  double sq = 0;
  for (const auto& p : e.model()->parameters())
    if (p.grad().defined()) sq += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
  return std::sqrt(sq);
}

train::PretrainOptions quiet(const fs::path& out, bool resume = false) {
  train::PretrainOptions o;
  o.out_dir = out.string();
  o.resume = resume;
  o.summary = false;
  o.handle_signals = false;
  return o;
}

}  // namespace

// ---- Config ----------------------------------------------------------------------------

TEST(Config, DefaultsFileAndOverrides) {
  auto dir = temp_dir("cfg_ok");
  auto path = write(dir / "a.yaml", "model:\n  d_model: 64\n  attention: sigmoid\n  sigmoid_bias: -2\n"
                                    "train:\n  lr: 1e-4\n  max_grad_norm: 0\ndata:\n  files: [x.h5ad, y.h5ad]\n");
  auto c = train::load_config(path);
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.model.attention, "sigmoid");
  ASSERT_TRUE(c.model.sigmoid_bias.has_value());
  EXPECT_DOUBLE_EQ(*c.model.sigmoid_bias, -2.0);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_EQ(c.data.files.size(), 2u);
  EXPECT_EQ(c.model.n_layers, train::Config{}.model.n_layers);  // default kept
  train::apply_override(c, "model.n_layers=4");
  train::apply_override(c, "model.sigmoid_bias=null");
  train::apply_override(c, "data.files=[z.h5ad]");
  EXPECT_EQ(c.model.n_layers, 4);
  EXPECT_FALSE(c.model.sigmoid_bias.has_value());
  EXPECT_EQ(c.data.files, std::vector<std::string>{"z.h5ad"});
  // The saved config reads back to the same configuration.
  auto again = train::load_config(write(dir / "b.yaml", train::to_yaml(c)));
  EXPECT_EQ(train::to_yaml(again), train::to_yaml(c));
  for (const char* f : {"quickstart", "10m", "100m", "160m", "160m-8k-stress"}) {
    auto cfg = train::load_config(std::string(SCTRAIN_SOURCE_DIR) + "/configs/" + f + ".yaml");
    EXPECT_NO_THROW(train::validate(cfg)) << f;
  }
}

TEST(Config, ErrorsNameTheKeyAndFile) {
  auto dir = temp_dir("cfg_bad");
  auto unknown = write(dir / "unknown.yaml", "model:\n  d_model: 64\n  n_layer: 4\n");
  auto msg = error_of([&] { train::load_config(unknown); });
  EXPECT_NE(msg.find("unknown key 'model.n_layer'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown.yaml:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("n_layers"), std::string::npos) << msg;  // lists the known keys

  auto section = write(dir / "section.yaml", "trian:\n  lr: 1\n");
  msg = error_of([&] { train::load_config(section); });
  EXPECT_NE(msg.find("unknown key 'trian'"), std::string::npos) << msg;

  auto type = write(dir / "type.yaml", "train:\n  lr: fast\n  batch_size: 8\n");
  msg = error_of([&] { train::load_config(type); });
  EXPECT_NE(msg.find("key 'train.lr'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expects a number"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'fast'"), std::string::npos) << msg;

  auto itype = write(dir / "itype.yaml", "model:\n  n_layers: 2.5\n");
  msg = error_of([&] { train::load_config(itype); });
  EXPECT_NE(msg.find("key 'model.n_layers'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expects an integer"), std::string::npos) << msg;

  msg = error_of([&] { train::load_config((dir / "missing.yaml").string()); });
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing.yaml"), std::string::npos) << msg;

  train::Config c;
  msg = error_of([&] { train::apply_override(c, "train.lrr=1"); });
  EXPECT_NE(msg.find("unknown key 'train.lrr'"), std::string::npos) << msg;
  msg = error_of([&] { train::apply_override(c, "train.grad_accum=many"); });
  EXPECT_NE(msg.find("expects an integer"), std::string::npos) << msg;
  c.model.attention = "linear";
  msg = error_of([&] { train::validate(c); });
  EXPECT_NE(msg.find("model.attention"), std::string::npos) << msg;
  c.model.attention = "softmax";
  c.model.activation = "relu";
  msg = error_of([&] { train::validate(c); });
  EXPECT_NE(msg.find("key 'model.activation'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("got 'relu'"), std::string::npos) << msg;

  // A missing data file is named before any work starts.
  train::Config run = tiny_run(1);
  run.data.files = {(dir / "nope.h5ad").string()};
  msg = error_of([&] { train::pretrain(run, quiet(dir / "run")); });
  EXPECT_NE(msg.find("nope.h5ad"), std::string::npos) << msg;
}

TEST(Schedule, WarmupThenCosine) {
  train::TrainConfig t;
  t.lr = 1.0;
  t.min_lr = 0.1;
  t.warmup_steps = 4;
  t.max_steps = 14;
  EXPECT_DOUBLE_EQ(train::lr_at(t, 0), 0.25);
  EXPECT_DOUBLE_EQ(train::lr_at(t, 3), 1.0);
  EXPECT_DOUBLE_EQ(train::lr_at(t, 4), 1.0);
  EXPECT_NEAR(train::lr_at(t, 9), 0.55, 1e-12);
  EXPECT_NEAR(train::lr_at(t, 14), 0.1, 1e-12);
  EXPECT_NEAR(train::lr_at(t, 20), 0.1, 1e-12);
}

// ---- Training on real data ----------------------------------------------------------------

TEST(Pretrain, LossFallsOnRealData) {
  auto dir = temp_dir("falls");
  // PBMC 3k (2638 cells, 13.7k genes): a fast fall from ln(vocab) ~ 9.5 as the model learns.
  auto cfg = tiny_run(40);
  cfg.data.files = {sctrain::testing::project_data("pbmc3k_seurat.h5ad")};
  cfg.train.val_every = 20;
  cfg.model.activation = "gelu_tanh";  // the named configs' GELU (the other runs here take the default)
  ASSERT_EQ(train::pretrain(cfg, quiet(dir)), 0);
  auto lines = loss_lines(dir / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 40u);
  const double first = mean_loss(lines, 0, 5), last = mean_loss(lines, lines.size() - 5, 5);
  EXPECT_LT(last, first - 0.5) << "first 5 steps " << first << ", last 5 " << last;
  EXPECT_TRUE(fs::exists(dir / "config.yaml"));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "step_0000040" / "model.pt"));
  // Validation lines at steps 0, 20, 40; the loss fell there too.
  std::ifstream in(dir / "metrics.jsonl");
  std::string line;
  std::vector<double> val;
  while (std::getline(in, line))
    if (auto p = line.find("\"val_loss\":"); p != std::string::npos) val.push_back(std::stod(line.substr(p + 11)));
  ASSERT_EQ(val.size(), 3u);
  EXPECT_LT(val.back(), val.front());

  // The checkpoint rebuilds the model (what evaluation and embedding use).
  train::Config saved;
  auto m = train::load_checkpoint_model(dir / "checkpoints" / "step_0000040", torch::kCPU, &saved);
  EXPECT_EQ(saved.model.d_model, 32);
  EXPECT_EQ(saved.model.activation, "gelu_tanh");
  EXPECT_TRUE(fs::exists(dir / "corpus" / "vocab.tsv"));
  data::Batch b;
  b.batch_size = 1;
  b.seq_len = 3;
  b.tokens = {data::kCls, 10, 11};
  b.labels = {data::kIgnoreLabel, data::kIgnoreLabel, data::kIgnoreLabel};
  b.lengths = {3};
  torch::NoGradGuard g;
  auto h = m->forward(model::to_inputs(b, torch::kCPU));
  EXPECT_EQ(model::ModelImpl::cell_embedding(h).sizes(), (std::vector<int64_t>{1, 32}));
}

// On the GPU the fused add + LayerNorm adds proj's and fc2's biases and sums their gradients
// (model::set_branch_bias_in_norm). Trained on real data with it and without (the biases in
// their GEMMs), the losses agree step by step and the biases learn the same thing.
TEST(Pretrain, BranchBiasInNormOnRealDataGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  auto dir = temp_dir("bias_in_norm");
  auto cfg = tiny_run(40);
  cfg.data.files = {sctrain::testing::project_data("pbmc3k_seurat.h5ad")};
  cfg.model.activation = "gelu_tanh";
  cfg.model.attention = "sigmoid";
  cfg.model.d_model = 128;  // head dim 64: the sigmoid kernel's
  cfg.model.d_ff = 256;
  cfg.train.device = "cuda";  // precision auto: bf16 autocast, the fused kernels' path
  cfg.train.checkpoint_every = 40;
  std::vector<Line> losses[2];
  torch::Tensor biases[2];
  struct RestoreSwitch {  // on again however the test ends: the tests after it share the process
    ~RestoreSwitch() { model::set_branch_bias_in_norm(true); }
  } restore;
  for (int on : {1, 0}) {
    model::set_branch_bias_in_norm(on == 1);
    const auto out = dir / (on ? "on" : "off");
    ASSERT_EQ(train::pretrain(cfg, quiet(out)), 0);
    losses[on] = loss_lines(out / "metrics.jsonl");
    auto m = train::load_checkpoint_model(out / "checkpoints" / "step_0000040", torch::kCPU);
    std::vector<torch::Tensor> b;
    for (const auto& item : m->named_parameters()) {
      const auto& k = item.key();
      if (!k.starts_with("blocks.")) continue;
      if (k.ends_with("proj.bias") || k.ends_with("fc2.bias")) {
        EXPECT_GT(item.value().abs().max().item<float>(), 0.f) << k << " never moved from zero: no gradient";
        b.push_back(item.value().flatten());
      }
    }
    ASSERT_EQ(b.size(), 4u) << "2 blocks x (proj, fc2)";
    biases[on] = torch::cat(b);
  }
  ASSERT_EQ(losses[0].size(), 40u);
  ASSERT_EQ(losses[1].size(), 40u);
  double max_rel = 0;
  for (size_t i = 0; i < 40; ++i)
    max_rel = std::max(max_rel, std::abs(losses[1][i].value - losses[0][i].value) / losses[0][i].value);
  const double first = mean_loss(losses[1], 0, 5), last = mean_loss(losses[1], 35, 5);
  EXPECT_LT(last, first - 0.5) << "with the biases in the norm the loss did not fall";
  EXPECT_LT(max_rel, 0.03) << "the losses of the two runs part";  // H100: 0.0154
  const double cos = torch::cosine_similarity(biases[1], biases[0], 0).item<double>();
  std::printf("losses %.3f -> %.3f, largest relative difference %.4f, biases' cosine %.4f\n", first, last, max_rel, cos);
  EXPECT_GT(cos, 0.8) << "proj's and fc2's biases learned different things with and without the fused path";
}

TEST(Pretrain, ResumeGivesTheSameLosses) {
  auto dir = temp_dir("resume");
  auto cfg = tiny_run(12);
  cfg.train.checkpoint_every = 3;
  ASSERT_EQ(train::pretrain(cfg, quiet(dir / "straight")), 0);

  auto half = cfg;
  half.train.stop_at = 6;
  ASSERT_EQ(train::pretrain(half, quiet(dir / "split")), 0);
  EXPECT_EQ(train::latest_checkpoint(dir / "split" / "checkpoints")->step, 6);
  // Without --resume an existing run is not overwritten.
  EXPECT_NE(error_of([&] { train::pretrain(cfg, quiet(dir / "split")); }).find("--resume"), std::string::npos);
  ASSERT_EQ(train::pretrain(cfg, quiet(dir / "split", /*resume=*/true)), 0);

  auto a = loss_lines(dir / "straight" / "metrics.jsonl");
  auto b = loss_lines(dir / "split" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step, b[i].step);
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << a[i].step;
  }
  // keep_checkpoints (2) newest are kept, nothing temporary is left.
  auto cks = train::list_checkpoints(dir / "straight" / "checkpoints");
  ASSERT_EQ(cks.size(), 2u);
  EXPECT_EQ(cks[0].step, 9);
  EXPECT_EQ(cks[1].step, 12);
  for (const auto& e : fs::directory_iterator(dir / "straight" / "checkpoints"))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

TEST(Pretrain, NonFiniteLossPolicies) {
  auto dir = temp_dir("nan");
  auto cfg = tiny_run(6);
  cfg.train.lr = 1e30;  // the first update blows the weights up: later losses are not finite
  cfg.train.min_lr = 1e30;
  cfg.train.warmup_steps = 0;
  cfg.train.max_grad_norm = 0;
  cfg.train.checkpoint_every = 1;
  cfg.train.nan_policy = "stop";
  EXPECT_EQ(train::pretrain(cfg, quiet(dir / "stop")), 3);
  auto last = train::latest_checkpoint(dir / "stop" / "checkpoints");
  ASSERT_TRUE(last.has_value());
  auto lines = loss_lines(dir / "stop" / "metrics.jsonl");
  ASSERT_FALSE(lines.empty());
  EXPECT_LT(last->step, lines.back().step);  // the bad step was not checkpointed
  EXPECT_LT(lines.size(), 6u);

  cfg.train.nan_policy = "skip";
  EXPECT_EQ(train::pretrain(cfg, quiet(dir / "skip")), 0);
  std::ifstream in(dir / "skip" / "metrics.jsonl");
  std::string line;
  int skipped = 0;
  while (std::getline(in, line)) skipped += line.find("\"skipped\":true") != std::string::npos;
  EXPECT_GT(skipped, 0);
}

TEST(Pretrain, SigintSavesAndExits130) {
  auto dir = temp_dir("sigint");
  auto cfg = tiny_run(100000);
  auto o = quiet(dir);
  o.handle_signals = true;
  auto fut = std::async(std::launch::async, [&] { return train::pretrain(cfg, o); });
  // Wait for a few steps, then interrupt.
  for (int i = 0; i < 600; ++i) {
    if (loss_lines(dir / "metrics.jsonl").size() >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::raise(SIGINT);
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  EXPECT_EQ(fut.get(), 130);
  auto ck = train::latest_checkpoint(dir / "checkpoints");
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->step, loss_lines(dir / "metrics.jsonl").back().step);
}

// Our AdamW (ATen's fused kernel) against LibTorch's torch::optim::AdamW.
TEST(AdamW, MatchesLibTorch) {
  torch::manual_seed(0);
  auto w = torch::randn({4, 3}), b = torch::randn({3});
  auto w2 = w.clone().requires_grad_(), b2 = b.clone().requires_grad_();
  w.requires_grad_();
  b.requires_grad_();
  train::AdamWOptions o;
  o.weight_decay = 0.1;
  train::AdamW ours({{"w", w}, {"b", b}}, o);
  torch::optim::AdamW ref(
      std::vector<torch::optim::OptimizerParamGroup>{
          torch::optim::OptimizerParamGroup({w2}, std::make_unique<torch::optim::AdamWOptions>(
                                                      torch::optim::AdamWOptions(0.01).betas({0.9, 0.98}).eps(1e-8).weight_decay(0.1))),
          torch::optim::OptimizerParamGroup({b2}, std::make_unique<torch::optim::AdamWOptions>(
                                                      torch::optim::AdamWOptions(0.01).betas({0.9, 0.98}).eps(1e-8).weight_decay(0.0)))},
      torch::optim::AdamWOptions(0.01));
  auto x = torch::randn({5, 4});
  for (int step = 0; step < 4; ++step) {
    ours.zero_grad();
    ref.zero_grad();
    torch::matmul(x, w).add(b).tanh().sum().backward();
    torch::matmul(x, w2).add(b2).tanh().sum().backward();
    ours.step(0.01);
    ref.step();
  }
  EXPECT_TRUE(torch::allclose(w, w2, 1e-5, 1e-6)) << (w - w2).abs().max().item<double>();
  EXPECT_TRUE(torch::allclose(b, b2, 1e-5, 1e-6)) << (b - b2).abs().max().item<double>();
}

// found_inf skips everything; grad_scale divides the gradients first (clipping).
TEST(AdamW, FoundInfSkipsAndGradScaleDivides) {
  torch::manual_seed(0);
  auto w = torch::randn({4, 3}).requires_grad_(), w2 = w.detach().clone().requires_grad_();
  train::AdamWOptions o;
  o.weight_decay = 0.1;
  train::AdamW ours({{"w", w}}, o), ref({{"w", w2}}, o);
  auto x = torch::randn({5, 4});
  for (int step = 0; step < 3; ++step) {
    ours.zero_grad();
    ref.zero_grad();
    torch::matmul(x, w).tanh().sum().backward();
    torch::matmul(x, w2).tanh().sum().backward();
    const auto before = w.detach().clone();
    ours.step(0.01, torch::tensor(1.0f), torch::tensor(1.0f));  // skipped
    EXPECT_TRUE(torch::equal(w, before));
    ours.step(0.01, torch::tensor(4.0f), torch::tensor(0.0f));  // gradients / 4
    {
      torch::NoGradGuard g;
      w2.mutable_grad().mul_(0.25);
    }
    ref.step(0.01);
    EXPECT_TRUE(torch::allclose(w, w2, 1e-6, 1e-7)) << "step " << step;
    EXPECT_TRUE(torch::allclose(w.grad(), w2.grad(), 1e-6, 1e-7));  // stored divided
  }
  // The skipped steps did not count: the step count is 3, as the reference's.
  torch::serialize::OutputArchive out;
  ours.save(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  std::istringstream in(bytes.str());
  torch::serialize::InputArchive ar;
  ar.load_from(in);
  torch::Tensor step;
  ar.read("adamw.w.step", step);
  EXPECT_EQ(step.item<float>(), 3.0f);
}

// Our CUDA AdamW (kernels/adamw.cu) against ATen's fused AdamW over more tensors than one launch
// takes: sizes below, at and past a block's chunk, not multiples of 4, one unaligned view; clipping
// and a skipped step among the steps. The bf16 copies it writes equal the updated weights' casts.
TEST(AdamW, CudaKernelMatchesAtenGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  torch::manual_seed(3);
  const auto opt = torch::TensorOptions().device(torch::kCUDA);
  const std::vector<std::vector<int64_t>> shapes = {{37}, {64, 48}, {4099}, {3, 5000}, {4096}, {1}, {24, 1024}};
  std::vector<std::pair<std::string, torch::Tensor>> ours, ref;
  for (int i = 0; i < 80; ++i) {
    auto w = torch::randn(shapes[i % shapes.size()], opt);
    if (i == 11) w = torch::randn({4101}, opt).narrow(0, 1, 4100);  // 4-byte aligned only
    ours.emplace_back("p" + std::to_string(i), (i == 11 ? w : w.clone()).requires_grad_());
    ref.emplace_back("p" + std::to_string(i), w.clone().requires_grad_());
  }
  ASSERT_NE(reinterpret_cast<uintptr_t>(ours[11].second.data_ptr()) % 16, 0u);
  {
    torch::NoGradGuard g;
    for (auto& [name, p] : ours)
      if (p.dim() == 2) model::cast_weight(p, torch::kBFloat16);  // kept copies for the kernel to write
  }
  train::AdamWOptions o;
  o.weight_decay = 0.1;
  train::AdamW a(ours, o), b(ref, o);
  for (int step = 0; step < 5; ++step) {
    for (size_t i = 0; i < ours.size(); ++i) {
      auto grad = torch::randn_like(ours[i].second) * (i % 3 == 0 ? 1e-3 : 1.0);
      ours[i].second.mutable_grad() = grad.clone();
      ref[i].second.mutable_grad() = grad.clone();
    }
    const auto scale = torch::tensor(step % 2 == 1 ? 2.5f : 1.0f, opt);
    const auto inf = torch::tensor(step == 2 ? 1.0f : 0.0f, opt);
    train::set_adamw_writes_casts(true);
    a.step(0.01, scale, inf);
    train::set_adamw_writes_casts(false);
    b.step(0.01, scale, inf);
    train::set_adamw_writes_casts(true);
    for (size_t i = 0; i < ours.size(); ++i) {
      const auto &pa = ours[i].second, &pb = ref[i].second;
      EXPECT_TRUE(torch::allclose(pa, pb, 1e-5, 1e-6))
          << "step " << step << " tensor " << i << ": max diff " << (pa - pb).abs().max().item<double>();
      if (pa.dim() != 2) continue;
      auto copy = model::kept_weight_cast(pa);
      ASSERT_TRUE(copy.defined()) << "tensor " << i << ": the kept copy is no longer current";
      EXPECT_TRUE(torch::equal(copy, pa.detach().to(torch::kBFloat16))) << "step " << step << " tensor " << i;
    }
  }
}

// forward_backward / update / collect in the pipelined order give train_step's results:
// statistics, weights, and clipping (where AdamW stores the divided gradients, as ATen's does, those
// left after the update have norm max_norm; our CUDA kernel does not write them back).
void pipelined_equals_train_step(const std::string& device, bool exact, bool grads_stored = true) {
  for (double clip : {0.0, 0.05}) {
    auto cfg = tiny_engine(device, clip);
    std::vector<data::Batch> batches;
    for (uint64_t i = 0; i < 5; ++i) batches.push_back(synthetic_batch(3, 16, 60, 11 + i));
    train::Engine a(cfg), b(cfg);
    std::vector<train::StepStats> sa, sb;
    for (const auto& x : batches) {
      sa.push_back(a.train_step({x}));
      if (clip > 0 && sa.back().grad_norm > clip) {
        if (grads_stored) EXPECT_NEAR(grad_norm_of(a), clip, 1e-4 * clip) << device;
      } else {
        EXPECT_NEAR(grad_norm_of(a), sa.back().grad_norm, 1e-4 * sa.back().grad_norm) << device;
      }
    }
    for (size_t i = 0; i < batches.size(); ++i) {
      b.forward_backward({batches[i]});
      if (i > 0) sb.push_back(b.collect());
      b.update();
      EXPECT_EQ(b.pending(), 1u);
    }
    sb.push_back(b.collect());
    EXPECT_EQ(b.pending(), 0u);
    ASSERT_EQ(sa.size(), sb.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      EXPECT_EQ(sb[i].step, static_cast<int64_t>(i + 1));
      EXPECT_EQ(sa[i].step, sb[i].step);
      EXPECT_TRUE(sb[i].finite && sb[i].applied);
      EXPECT_EQ(sa[i].tokens, sb[i].tokens);
      EXPECT_EQ(sa[i].masked, sb[i].masked);
      EXPECT_DOUBLE_EQ(sa[i].lr, sb[i].lr);
      ASSERT_EQ(sb[i].block_grad_norms.size(), 4u);
      if (exact) {
        EXPECT_EQ(sa[i].loss, sb[i].loss) << device << " step " << i;
        EXPECT_EQ(sa[i].grad_norm, sb[i].grad_norm) << device << " step " << i;
      } else {  // GPU attention backward may use atomics: not bitwise reproducible
        EXPECT_NEAR(sa[i].loss, sb[i].loss, 1e-3 * std::abs(sa[i].loss)) << device << " step " << i;
        EXPECT_NEAR(sa[i].grad_norm, sb[i].grad_norm, 2e-2 * sa[i].grad_norm) << device << " step " << i;
      }
    }
    auto pa = a.model()->parameters(), pb = b.model()->parameters();
    for (size_t i = 0; i < pa.size(); ++i)
      if (exact) EXPECT_TRUE(torch::equal(pa[i], pb[i])) << i;
      else EXPECT_TRUE(torch::allclose(pa[i], pb[i], 1e-2, 1e-2)) << i;
  }
}

TEST(Engine, PipelinedStepsEqualTrainStep) { pipelined_equals_train_step("cpu", true); }

TEST(Engine, PipelinedStepsEqualTrainStepGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  pipelined_equals_train_step("cuda", false, /*grads_stored=*/false);  // our AdamW kernel
  train::set_adamw_writes_casts(false);  // ATen's fused AdamW: the clipped gradients are left
  pipelined_equals_train_step("cuda", false);
  train::set_adamw_writes_casts(true);
}

// A non-finite loss skips the update on the device: weights and the optimizer's step count
// stay as they were, and the step still counts (the schedule goes on).
void non_finite_step_is_skipped(const std::string& device) {
  auto cfg = tiny_engine(device, 1.0);
  train::Engine e(cfg);
  auto batch = synthetic_batch(2, 16, 60, 5);
  e.train_step({batch});
  {
    torch::NoGradGuard g;
    e.model()->head_bias[7].fill_(std::numeric_limits<float>::infinity());
  }
  std::vector<torch::Tensor> before;
  for (const auto& p : e.model()->parameters()) before.push_back(p.detach().clone());
  auto names = e.model()->named_parameters();
  e.forward_backward({batch});
  e.update();
  auto s = e.collect();
  EXPECT_FALSE(s.finite);
  EXPECT_FALSE(s.applied);
  EXPECT_EQ(s.step, 2);
  EXPECT_EQ(e.step(), 2);
  auto after = e.model()->parameters();
  for (size_t i = 0; i < after.size(); ++i)
    EXPECT_TRUE(torch::equal(after[i], before[i])) << device << " " << names[i].key();
}

TEST(Engine, NonFiniteStepIsSkipped) { non_finite_step_is_skipped("cpu"); }

// The GEMMs' kept bf16 weight copies follow every optimizer step (fused AdamW bumps the weights'
// version counters): after each step's refresh each kept copy is the weight's cast, and training with
// them gives the losses of casting at every use.
TEST(Engine, KeptWeightCastsFollowUpdatesGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  auto cfg = tiny_engine("cuda", 0.05);
  cfg.model.qk_norm = false;
  cfg.model.attention = "sigmoid";
  std::vector<data::Batch> batches;
  for (uint64_t i = 0; i < 4; ++i) batches.push_back(synthetic_batch(3, 16, 60, 21 + i));
  std::vector<double> kept, per_use;
  for (bool cache : {true, false}) {
    model::set_cached_weight_casts(cache);
    torch::manual_seed(5);
    train::Engine e(cfg);
    for (const auto& b : batches) {
      (cache ? kept : per_use).push_back(e.train_step({b}).loss);
      if (!cache) continue;
      model::refresh_weight_casts();  // recasts what the update changed, in one multi-tensor copy
      int checked = 0;
      for (const auto& p : e.model()->parameters()) {
        if (p.dim() != 2) continue;  // the linear and embedding weights
        auto c = model::cast_weight(p, torch::kBFloat16);
        EXPECT_TRUE(torch::equal(c, p.detach().to(torch::kBFloat16))) << "a kept copy missed an update";
        ++checked;
      }
      EXPECT_GT(checked, 4);
    }
  }
  model::set_cached_weight_casts(true);
  ASSERT_EQ(kept.size(), per_use.size());
  for (size_t i = 0; i < kept.size(); ++i) EXPECT_NEAR(kept[i], per_use[i], 1e-3 * std::abs(per_use[i])) << i;
}

TEST(Engine, NonFiniteStepIsSkippedGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  non_finite_step_is_skipped("cuda");
}

// The trainer collects a step late unless it validates, checkpoints or ends after it: the
// metrics are those of collecting every step at once (every step a checkpoint step).
// step_time_s is each step's own work, also for the steps collected at once (validation,
// checkpoint, last) and the ones after them: on the CPU a late-collected step has already run the
// next step's forward and backward, which must not count as its time.
void step_times_are_each_steps_own(const std::string& device) {
  auto dir = temp_dir("times_" + device);
  auto cfg = tiny_run(12);
  cfg.train.val_every = 4;
  cfg.train.device = device;
  ASSERT_EQ(train::pretrain(cfg, quiet(dir / "run")), 0);
  std::vector<std::pair<int64_t, double>> times;
  std::ifstream in(dir / "run" / "metrics.jsonl");
  std::string line;
  const std::string key = "\"step_time_s\":";
  while (std::getline(in, line)) {
    const auto p = line.find(key);
    if (p == std::string::npos) continue;
    times.push_back({std::stoll(line.substr(8, line.find(',') - 8)), std::stod(line.substr(p + key.size()))});
  }
  ASSERT_EQ(times.size(), 12u);
  std::vector<double> sorted;
  for (const auto& [step, t] : times) sorted.push_back(t);
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  for (const auto& [step, t] : times) EXPECT_GT(t, 0.2 * median) << "step " << step << ": " << t << " s, median " << median;
  train::remove_tree(dir);
}

TEST(Pretrain, StepTimesAreEachStepsOwn) { step_times_are_each_steps_own("cpu"); }

// On the GPU a tiny model is host-bound: the GPU finishes a step long before the host collects it.
TEST(Pretrain, StepTimesAreEachStepsOwnGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU";
  step_times_are_each_steps_own("cuda");
}

TEST(Pretrain, LateCollectionGivesTheSameMetrics) {
  auto dir = temp_dir("late");
  auto cfg = tiny_run(8);
  ASSERT_EQ(train::pretrain(cfg, quiet(dir / "late")), 0);  // checkpoint_every 0: late
  cfg.train.checkpoint_every = 1;
  ASSERT_EQ(train::pretrain(cfg, quiet(dir / "each")), 0);
  auto a = loss_lines(dir / "late" / "metrics.jsonl"), b = loss_lines(dir / "each" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step, static_cast<int64_t>(i + 1));
    EXPECT_EQ(a[i].step, b[i].step);
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << a[i].step;
  }
  // The gradient norms too: each metrics line up to its timing fields.
  auto lines = [](const fs::path& p) {
    std::vector<std::string> out;
    std::ifstream in(p);
    std::string l;
    while (std::getline(in, l))
      if (l.find("\"loss\":") != std::string::npos) out.push_back(l.substr(0, l.find("\"step_time_s\"")));
    return out;
  };
  EXPECT_EQ(lines(dir / "late" / "metrics.jsonl"), lines(dir / "each" / "metrics.jsonl"));

  // nan_policy stop, collected late: the step before the bad one got no update either, no
  // checkpoint is written, and the bad step is the last line.
  auto nan = tiny_run(6);
  nan.train.lr = 1e30;
  nan.train.min_lr = 1e30;
  nan.train.warmup_steps = 0;
  nan.train.max_grad_norm = 0;
  nan.train.nan_policy = "stop";
  EXPECT_EQ(train::pretrain(nan, quiet(dir / "stop")), 3);
  EXPECT_FALSE(train::latest_checkpoint(dir / "stop" / "checkpoints").has_value());
  auto l = loss_lines(dir / "stop" / "metrics.jsonl");
  ASSERT_FALSE(l.empty());
  EXPECT_LT(l.size(), 6u);
  std::ifstream in(dir / "stop" / "metrics.jsonl");
  std::string line, last_line;
  while (std::getline(in, line)) last_line = line;
  EXPECT_NE(last_line.find("\"skipped\":true"), std::string::npos) << last_line;
}
