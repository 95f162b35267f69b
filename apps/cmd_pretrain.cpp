// sctrain pretrain: masked-gene pretraining of a transformer encoder on .h5ad files.
#include <cstdio>
#include <filesystem>

#include "command.h"
#include "train/config.h"
#include "train/trainer.h"
#include "util/log.h"

namespace sctrain::app {
namespace {

struct PretrainArgs {
  std::string config;
  std::vector<std::string> data;
  std::vector<std::string> sets;
  std::string out;
  int64_t max_steps = 0;
  int64_t stop_at = 0;
  bool resume = false;
  bool show_config = false;
  bool keys = false;
};

const char* kHelp =
    "Pretrain a transformer encoder by masked-gene modelling: cells become gene-token\n"
    "sequences (CLS first), 15% of genes are masked, the model predicts them.\n\n"
    "  sctrain pretrain --config configs/quickstart.yaml --out runs/quickstart\n"
    "  sctrain pretrain --config configs/10m.yaml --data a.h5ad --data b.h5ad:raw/X --out runs/a\n"
    "  sctrain pretrain --config configs/quickstart.yaml --set model.n_layers=4 --set train.lr=5e-4\n"
    "  sctrain pretrain --config configs/quickstart.yaml --out runs/quickstart --resume\n"
    "  sctrain pretrain --keys                  # every config key, its type, default and meaning\n\n"
    "Writes OUT/config.yaml (resolved), OUT/metrics.jsonl (one JSON line per step: step, loss,\n"
    "lr, grad_norm, block_grad_norms, tokens_per_s, tflops, mem_peak_gib; validation lines\n"
    "carry val_loss), OUT/checkpoints/step_XXXXXXX/ (the last train.keep_checkpoints).\n"
    "Ctrl-C / SIGTERM finish the current step, save a checkpoint and exit 130 / 143;\n"
    "--resume continues exactly where it stopped. Exit 3: stopped on NaN/Inf (nan_policy: stop).";

}  // namespace

SCTRAIN_COMMAND({"pretrain", "Pretrain a model on .h5ad files (masked-gene modelling)", 30,
                 [](CLI::App& cmd) -> std::function<int()> {
                   auto a = std::make_shared<PretrainArgs>();
                   cmd.description(kHelp);
                   cmd.add_option("--config", a->config, "YAML config (configs/*.yaml); defaults for missing keys");
                   cmd.add_option("--data", a->data,
                                  "input FILE.h5ad[:matrix] or prepared DIR; repeat for several (replaces data.files)");
                   cmd.add_option("--out", a->out, "run directory (default runs/<config name>)");
                   cmd.add_option("--max-steps", a->max_steps, "optimizer steps (train.max_steps; the LR schedule spans them)");
                   cmd.add_option("--stop-at", a->stop_at, "stop this run after this step, keeping the schedule (train.stop_at)");
                   cmd.add_flag("--resume", a->resume, "continue from the latest checkpoint in OUT/checkpoints");
                   cmd.add_option("--set", a->sets, "override a config key: --set model.n_layers=4 (repeatable)");
                   cmd.add_flag("--print-config", a->show_config, "print the resolved config and exit");
                   cmd.add_flag("--keys", a->keys, "list every config key with type, default and meaning, and exit");
                   return [a]() -> int {
                     if (a->keys) {
                       std::fputs(train::describe_keys().c_str(), stdout);
                       return 0;
                     }
                     train::Config cfg = train::load_config(a->config);
                     for (const auto& s : a->sets) train::apply_override(cfg, s);
                     if (!a->data.empty()) cfg.data.files = a->data;
                     if (a->max_steps > 0) cfg.train.max_steps = a->max_steps;
                     if (a->stop_at > 0) cfg.train.stop_at = a->stop_at;
                     train::validate(cfg);
                     if (a->show_config) {
                       std::fputs(train::to_yaml(cfg).c_str(), stdout);
                       return 0;
                     }
                     train::PretrainOptions o;
                     o.out_dir = a->out;
                     if (o.out_dir.empty()) {
                       std::string name = a->config.empty() ? std::string("default")
                                                            : std::filesystem::path(a->config).stem().string();
                       o.out_dir = "runs/" + name;
                     }
                     o.resume = a->resume;
                     std::filesystem::create_directories(o.out_dir);
                     log::add_file((std::filesystem::path(o.out_dir) / "train.log").string());
                     return train::pretrain(cfg, o);
                   };
                 }});

}  // namespace sctrain::app
