// The run configuration: YAML with defaults, `--set key=value` overrides, saved resolved.
// No LibTorch here.
//
// Errors name the key and the file: an unknown key ("unknown key 'train.lrr' in FILE"),
// a wrong type ("key 'train.lr' in FILE expects a number, got 'fast'"), a bad value.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/config.h"

namespace sctrain::train {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DataConfig {
  std::vector<std::string> files;   // h5ad files ("FILE[:matrix]") or a prepared corpus DIR
  std::string mode = "rank";        // rank (Geneformer-style) or binned (scGPT-style)
  int64_t n_bins = 51;              // binned mode: bins incl. bin 0
  std::string gene_table = "auto";  // human_genes.tsv; "auto": the default table; "": none
  double val_fraction = 0.05;
  int64_t split_seed = 0;
  double mask_prob = 0.15;
  double mask_token = 0.8;
  double mask_random = 0.1;
  int64_t token_budget = 0;         // > 0: batches hold at most this many padded tokens
  bool fill_to_max_len = false;
  int64_t threads = 2;              // loader and prepare worker threads
};

struct TrainConfig {
  int64_t max_steps = 100;          // optimizer steps; the schedule spans these
  int64_t stop_at = 0;              // > 0: stop this run after this step (schedule unchanged)
  int64_t batch_size = 32;          // cells per micro-batch
  int64_t grad_accum = 1;           // micro-batches per optimizer step
  double lr = 1e-3;                 // peak learning rate
  double min_lr = 1e-4;             // cosine decays to this
  int64_t warmup_steps = 10;        // linear warmup from lr/warmup_steps
  double weight_decay = 0.01;       // AdamW, matrices only (not norms, biases, LayerScale)
  double beta1 = 0.9;
  double beta2 = 0.98;
  double eps = 1e-8;
  double max_grad_norm = 1.0;       // global-norm clipping; 0: off (no clipping at all)
  int64_t seed = 0;                 // model init, dropout and the loader
  std::string device = "auto";      // auto (cuda when available), cpu, cuda, cuda:N
  std::string precision = "auto";   // auto (bf16 autocast on GPU, fp32 on CPU), bf16, fp32
  int64_t threads = 0;              // CPU threads for LibTorch; 0: LibTorch's default
  std::string nan_policy = "skip";  // skip: drop the update; stop: stop (exit 3)
  int64_t log_every = 10;           // console log line (non-TTY) every N steps
  int64_t val_every = 50;           // validation every N steps (and at the start/end); 0: off
  int64_t val_batches = 0;          // validation batches used; 0: all
  int64_t checkpoint_every = 50;    // 0: only at the end
  int64_t keep_checkpoints = 2;     // keep the last K
};

struct Config {
  model::ModelConfig model;
  DataConfig data;
  TrainConfig train;
  std::string source;  // the file it was read from (for messages)
};

// Defaults, then the file (when path is not empty).
Config load_config(const std::string& path);
// Applies one "key=value" (value parsed as YAML: 4, 1e-3, true, [a, b], null).
void apply_override(Config& cfg, const std::string& assignment);
// Checks values (choices, ranges); throws ConfigError naming the key.
void validate(const Config& cfg);
// The whole configuration as YAML (every key, resolved values).
std::string to_yaml(const Config& cfg);
// One line per key: "model.d_model  int  128  width of the residual stream".
std::string describe_keys();

}  // namespace sctrain::train
