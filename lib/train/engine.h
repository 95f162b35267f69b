// One model, its optimizer and schedule on one device: what `pretrain` and `bench train`
// drive. Includes LibTorch: include from .cpp files only.
#pragma once
#include <c10/core/Event.h>
#include <torch/torch.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/batch.h"
#include "model/model.h"
#include "train/config.h"
#include "train/optim.h"

namespace sctrain::train {

// Learning rate of optimizer step `step` (0-based): linear warmup to lr over warmup_steps,
// then cosine from lr to min_lr at max_steps.
double lr_at(const TrainConfig& t, int64_t step);

struct StepStats {
  int64_t step = 0;                      // optimizer steps done, this one included (Engine::step())
  double loss = 0;                       // mean masked-token cross-entropy over micro-batches
  double grad_norm = 0;                  // global L2 norm of the gradients, before clipping
  std::vector<double> block_grad_norms;  // per Model::block_names() group
  bool finite = true;                    // loss and gradients finite
  bool applied = true;                   // the update was applied (false: skipped)
  double lr = 0;
  int64_t cells = 0, tokens = 0, padded_tokens = 0, masked = 0;
  double flops = 0;                      // model FLOPs (model::training_flops)
  std::chrono::steady_clock::time_point done;  // when the step's work was done (Engine::collect)
};

struct EvalStats {
  double loss = 0;  // mean over all masked tokens
  int64_t masked = 0;
};

torch::Device resolve_device(const std::string& name);  // "auto", "cpu", "cuda", "cuda:N"

class Engine {
 public:
  // cfg.model.vocab_size (and n_bins) must be set. Seeds LibTorch with train.seed first.
  explicit Engine(const Config& cfg);

  // One optimizer step over these micro-batches (gradient accumulation). Advances step().
  // A non-finite loss or gradient never updates the weights (the caller applies nan_policy).
  // = forward_backward(micro); update(); return collect();
  StepStats train_step(const std::vector<data::Batch>& micro);

  // The same step in three calls, so that the host can queue the next step's GPU work
  // before it waits for this step's statistics (no idle GPU between steps):
  //   forward_backward(m1); update();
  //   forward_backward(m2); s1 = collect(); update();   // ... s2 = collect()
  // The order of GPU work, and so every result, is that of train_step.
  // forward_backward: zeroes the gradients, runs forward and backward of each micro-batch.
  void forward_backward(const std::vector<data::Batch>& micro);
  // update: gradient norms, the non-finite check and clipping on the device (no host sync),
  // then AdamW, skipped on the device (found_inf) when the loss or a gradient is not finite.
  // Queues a copy of the statistics to the host. Advances step().
  void update();
  // The statistics of the oldest updated, not yet collected step (waits for them only).
  StepStats collect();
  // Drops the gradients of a forward_backward that will get no update (nan_policy: stop).
  void discard();
  size_t pending() const { return pending_.size(); }
  EvalStats evaluate(const std::vector<data::Batch>& batches);

  // model.pt and train_state.pt into / from a directory.
  void save(const std::filesystem::path& dir) const;
  void load(const std::filesystem::path& dir);

  int64_t step() const { return step_; }
  void set_step(int64_t s) { step_ = s; }
  model::Model& model() { return model_; }
  const torch::Device& device() const { return device_; }
  bool autocast() const { return autocast_; }
  int64_t num_parameters() const { return n_params_; }

  // Peak allocated GPU memory since the last reset, in GiB; -1 on CPU.
  double peak_memory_gib() const;
  void reset_peak_memory();
  void synchronize() const;

 private:
  Config cfg_;
  torch::Device device_;
  bool autocast_ = false;
  model::Model model_{nullptr};
  std::unique_ptr<AdamW> opt_;
  std::vector<torch::Tensor> group_params_;  // parameters in group order
  std::vector<int64_t> group_of_;           // their block group
  torch::Tensor group_index_;               // group of each gradient, on the device (cached)
  std::vector<int64_t> group_index_host_;
  int64_t n_groups_ = 0, n_params_ = 0, step_ = 0;

  // Between forward_backward and update.
  bool have_grads_ = false;
  torch::Tensor loss_sum_;  // sum of the micro-batches' losses, on the device
  int64_t n_micro_ = 0;
  StepStats counts_;        // cells, tokens, padded_tokens, masked, flops
  // Updated steps whose statistics are on their way to the host.
  struct Pending {
    StepStats s;                      // what the host knew at update()
    torch::Tensor host;               // [loss, group squared norms...] float64 (pinned on CUDA)
    std::optional<c10::Event> ready;  // recorded after the copy (CUDA; timing enabled)
  };
  std::deque<Pending> pending_;
  // CUDA: an event and the host time it completed at, to place the steps' events on the host clock.
  std::optional<c10::Event> clock_event_;
  std::chrono::steady_clock::time_point clock_host_;
};

// Loads model.pt into a model (for evaluation and embedding).
void load_model_weights(model::Model& m, const std::filesystem::path& file);

// Rebuilds the model of a checkpoint directory (config.yaml, meta.json, model.pt) on a
// device, in eval mode. The run's vocabulary is OUT/corpus/vocab.tsv (data::load_corpus).
model::Model load_checkpoint_model(const std::filesystem::path& dir, const torch::Device& device,
                                   Config* config = nullptr);

}  // namespace sctrain::train
