#include "train/engine.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/cuda.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "util/log.h"


namespace fs = std::filesystem;

namespace sctrain::train {

double lr_at(const TrainConfig& t, int64_t step) {
  if (t.warmup_steps > 0 && step < t.warmup_steps)
    return t.lr * static_cast<double>(step + 1) / static_cast<double>(t.warmup_steps);
  const double span = static_cast<double>(std::max<int64_t>(1, t.max_steps - t.warmup_steps));
  const double progress = std::clamp(static_cast<double>(step - t.warmup_steps) / span, 0.0, 1.0);
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + std::cos(M_PI * progress));
}

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  torch::Device d(name);
  if (d.is_cuda() && !torch::cuda::is_available())
    throw std::runtime_error(str("train.device is '", name, "' but no CUDA device is available"));
  if (d.is_cuda() && !d.has_index()) d = torch::Device(torch::kCUDA, 0);
  return d;
}

namespace {

// bf16 autocast for the forward pass (at::autocast, as torch.autocast does).
class AutocastScope {
 public:
  AutocastScope(bool on, c10::DeviceType type) : on_(on), type_(type) {
    if (!on_) return;
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
  }
  ~AutocastScope() {
    if (!on_) return;
    at::autocast::set_autocast_enabled(type_, false);
    at::autocast::clear_cache();
  }

 private:
  bool on_;
  c10::DeviceType type_;
};

}  // namespace

Engine::Engine(const Config& cfg) : cfg_(cfg), device_(resolve_device(cfg.train.device)) {
  const auto& t = cfg.train;
  if (t.precision == "bf16") autocast_ = true;
  else if (t.precision == "auto") autocast_ = device_.is_cuda();
  torch::manual_seed(static_cast<uint64_t>(t.seed));
  model_ = model::Model(cfg.model);
  model_->to(device_);
  model_->train();
  n_params_ = model_->num_parameters();

  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (const auto& item : model_->named_parameters()) named.emplace_back(item.key(), item.value());
  AdamWOptions o;
  o.beta1 = t.beta1;
  o.beta2 = t.beta2;
  o.eps = t.eps;
  o.weight_decay = t.weight_decay;
  opt_ = std::make_unique<AdamW>(named, o);

  auto groups = model_->parameter_groups();
  n_groups_ = static_cast<int64_t>(groups.size());
  for (int64_t g = 0; g < n_groups_; ++g)
    for (auto& p : groups[g]) {
      group_params_.push_back(p);
      group_of_.push_back(g);
    }
}

StepStats Engine::train_step(const std::vector<data::Batch>& micro) {
  forward_backward(micro);
  update();
  return collect();
}

void Engine::forward_backward(const std::vector<data::Batch>& micro) {
  if (have_grads_) throw std::logic_error("Engine::forward_backward: the last one got no update()");
  opt_->zero_grad();
  counts_ = StepStats();
  loss_sum_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(device_));
  n_micro_ = static_cast<int64_t>(micro.size());
  const double inv = 1.0 / static_cast<double>(n_micro_);
  for (const auto& b : micro) {
    model::Inputs in = model::to_inputs(b, device_);
    torch::Tensor loss;
    {
      AutocastScope ac(autocast_, device_.type());
      auto hidden = model_->forward(in);
      loss = model_->mlm(hidden, in).loss;
    }
    (loss * inv).backward();
    loss_sum_ += loss.detach();
    counts_.cells += b.batch_size;
    counts_.tokens += b.n_tokens();
    counts_.padded_tokens += b.batch_size * b.seq_len;
    counts_.masked += in.masked_positions.size(0);
    counts_.flops += model::training_flops(cfg_.model, n_params_, b.lengths.data(), b.batch_size);
  }
  have_grads_ = true;
}

void Engine::discard() {
  opt_->zero_grad();
  have_grads_ = false;
}

void Engine::update() {
  if (!have_grads_) throw std::logic_error("Engine::update: no forward_backward before it");
  have_grads_ = false;
  torch::NoGradGuard no_grad;
  Pending p;
  p.s = counts_;
  p.s.lr = lr_at(cfg_.train, step_);

  // Gradient norms: per parameter (one foreach kernel), summed per block.
  std::vector<torch::Tensor> grads;
  std::vector<int64_t> gid;
  for (size_t i = 0; i < group_params_.size(); ++i)
    if (group_params_[i].grad().defined()) {
      grads.push_back(group_params_[i].grad());
      gid.push_back(group_of_[i]);
    }
  auto norms = at::_foreach_norm(grads, 2);
  auto sq = torch::stack(norms).to(torch::kFloat).pow(2);
  if (!group_index_.defined() || gid != group_index_host_) {
    group_index_host_ = gid;
    group_index_ = torch::tensor(gid, torch::kLong).to(device_);
  }
  auto group_sq = torch::zeros({n_groups_}, sq.options()).index_add_(0, group_index_, sq);
  auto stats = torch::cat({(loss_sum_ * (1.0 / static_cast<double>(n_micro_))).reshape({1}), group_sq})
                   .to(torch::kDouble);
  // To the host without waiting: pinned memory, a non-blocking copy, an event after it.
  p.host = torch::empty({stats.numel()}, torch::TensorOptions().dtype(torch::kDouble).pinned_memory(device_.is_cuda()));
  p.host.copy_(stats, /*non_blocking=*/device_.is_cuda());
  if (device_.is_cuda()) {
    c10::impl::VirtualGuardImpl impl(device_.type());
    if (!clock_event_) {  // the anchor: recorded on an idle stream, so it completes at once
      impl.getStream(device_).synchronize();
      clock_event_.emplace(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
      clock_event_->record(impl.getStream(device_));
      clock_event_->synchronize();
      clock_host_ = std::chrono::steady_clock::now();
    }
    p.ready.emplace(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
    p.ready->record(impl.getStream(device_));
  }

  // The decisions the host made from these numbers, made on the device: skip the update
  // when the loss or the global norm is not finite; clip to max_grad_norm (only when the
  // norm exceeds it; max_grad_norm 0: no scaling at all).
  auto total = stats.narrow(0, 1, n_groups_).sum();
  auto finite = torch::isfinite(stats[0]).logical_and(torch::isfinite(total));
  auto found_inf = finite.logical_not().to(torch::kFloat);
  std::optional<torch::Tensor> grad_scale;
  const double max_norm = cfg_.train.max_grad_norm;
  if (max_norm > 0) {
    auto norm = total.sqrt();
    // AdamW divides the gradients by this: (norm + 1e-6) / max_norm when clipping, else 1.
    grad_scale = torch::where(norm > max_norm, (norm + 1e-6) / max_norm, torch::ones_like(norm)).to(torch::kFloat);
  }
  opt_->step(p.s.lr, grad_scale, found_inf);
  ++step_;
  p.s.step = step_;
  // When the host has queued (on the CPU: done) the step's work; collect() adds the GPU's side.
  p.s.done = std::chrono::steady_clock::now();
  pending_.push_back(std::move(p));
}

StepStats Engine::collect() {
  if (pending_.empty()) throw std::logic_error("Engine::collect: no updated step to collect");
  Pending p = std::move(pending_.front());
  pending_.pop_front();
  StepStats s = std::move(p.s);
  if (p.ready) {
    // Done = queued by the host and finished on the GPU, whichever came later (the host may
    // collect a step well after the GPU finished it).
    p.ready->synchronize();
    const auto gpu_done = clock_host_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                            std::chrono::duration<double, std::milli>(clock_event_->elapsedTime(*p.ready)));
    s.done = std::max(s.done, gpu_done);
  }
  const double* h = p.host.const_data_ptr<double>();
  s.loss = h[0];
  double total = 0;
  for (int64_t g = 0; g < n_groups_; ++g) {
    total += h[1 + g];
    s.block_grad_norms.push_back(std::sqrt(h[1 + g]));
  }
  s.grad_norm = std::sqrt(total);
  s.finite = std::isfinite(s.loss) && std::isfinite(s.grad_norm);
  s.applied = s.finite;  // update() skipped it on the device otherwise
  return s;
}

EvalStats Engine::evaluate(const std::vector<data::Batch>& batches) {
  EvalStats e;
  torch::NoGradGuard g;
  model_->eval();
  torch::Tensor sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device_));
  for (const auto& b : batches) {
    model::Inputs in = model::to_inputs(b, device_);
    const int64_t m = in.masked_positions.size(0);
    if (m == 0) continue;
    AutocastScope ac(autocast_, device_.type());
    auto out = model_->mlm(model_->forward(in), in);
    sum += out.loss.to(torch::kDouble) * static_cast<double>(m);
    e.masked += m;
  }
  model_->train();
  e.loss = e.masked ? sum.item<double>() / static_cast<double>(e.masked) : std::nan("");
  return e;
}

void Engine::save(const fs::path& dir) const {
  {
    torch::serialize::OutputArchive ar;
    for (const auto& item : model_->named_parameters()) ar.write(item.key(), item.value());
    for (const auto& item : model_->named_buffers()) ar.write(item.key(), item.value(), true);
    ar.save_to((dir / "model.pt").string());
  }
  torch::serialize::OutputArchive ar;
  opt_->save(ar);
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(cpu.mutex());
    ar.write("rng.cpu", cpu.get_state());
  }
  if (device_.is_cuda()) {
    at::Generator gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(gen.mutex());
    ar.write("rng.cuda", gen.get_state());
  }
  ar.save_to((dir / "train_state.pt").string());
}

void load_model_weights(model::Model& m, const fs::path& file) {
  torch::serialize::InputArchive ar;
  ar.load_from(file.string());
  torch::NoGradGuard g;
  for (auto& item : m->named_parameters()) {
    torch::Tensor t;
    if (!ar.try_read(item.key(), t))
      throw std::runtime_error(str(file.string(), " has no parameter '", item.key(),
                                   "': the checkpoint is of another model configuration"));
    if (t.sizes() != item.value().sizes())
      throw std::runtime_error(sctrain::str(file.string(), ": parameter '", item.key(), "' has shape ",
                                            t.sizes(), ", the model ", item.value().sizes()));
    item.value().copy_(t);
  }
}

model::Model load_checkpoint_model(const fs::path& dir, const torch::Device& device, Config* config) {
  Config cfg = load_config((dir / "config.yaml").string());
  YAML::Node meta = YAML::LoadFile((dir / "meta.json").string());
  cfg.model.vocab_size = meta["vocab_size"].as<int64_t>();
  cfg.model.n_bins = cfg.data.mode == "binned" ? cfg.data.n_bins : 0;
  model::Model m(cfg.model);
  load_model_weights(m, dir / "model.pt");
  m->to(device);
  m->eval();
  if (config) *config = cfg;
  return m;
}

void Engine::load(const fs::path& dir) {
  load_model_weights(model_, dir / "model.pt");
  torch::serialize::InputArchive ar;
  ar.load_from((dir / "train_state.pt").string(), device_);
  opt_->load(ar);
  torch::Tensor state;
  ar.read("rng.cpu", state);
  {
    at::Generator cpu = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(cpu.mutex());
    cpu.set_state(state.to(torch::kCPU));
  }
  if (device_.is_cuda() && ar.try_read("rng.cuda", state)) {
    at::Generator gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state.to(torch::kCPU));
  }
}

// Device-generic allocator statistics (c10::DeviceAllocator): no CUDA headers needed, so
// they work in every build against a CUDA LibTorch.
double Engine::peak_memory_gib() const {
  if (!device_.is_cuda()) return -1.0;
  auto st = c10::getDeviceAllocator(device_.type())->getDeviceStats(device_.index());
  return static_cast<double>(st.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak) /
         (1024.0 * 1024.0 * 1024.0);
}

void Engine::reset_peak_memory() {
  if (device_.is_cuda()) c10::getDeviceAllocator(device_.type())->resetPeakStats(device_.index());
}

void Engine::synchronize() const {
  if (device_.is_cuda()) torch::cuda::synchronize(device_.index());
}

}  // namespace sctrain::train
