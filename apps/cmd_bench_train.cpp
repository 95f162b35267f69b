// sctrain bench-train: steady-state training throughput of a config on synthetic cells.
#include <cstdio>

#include "command.h"
#include "train/config.h"
#include "train/trainer.h"

namespace sctrain::app {

SCTRAIN_COMMAND({"bench-train", "Measure training throughput (tokens/s, TFLOP/s, peak memory) on synthetic cells", 35,
                 [](CLI::App& cmd) -> std::function<int()> {
                   struct Args {
                     std::string config;
                     std::vector<std::string> sets;
                     train::BenchOptions o;
                   };
                   auto a = std::make_shared<Args>();
                   cmd.description(
                       "Measure training throughput of a config: tokens/s, TFLOP/s, peak GPU memory.\n\n"
                       "Trains the config's model on synthetic full-length cells (random genes, 15% masked)\n"
                       "for --warmup untimed and --steps timed optimizer steps, exactly as `pretrain`\n"
                       "steps (bf16 autocast on GPU, fused AdamW, gradient norms, clipping per config),\n"
                       "and prints one JSON line: tokens_per_s, tflops (6*params*tokens +\n"
                       "12*n_layers*d_model*len^2 per sequence), mem_peak_gib, step_ms.\n\n"
                       "  sctrain bench-train --config configs/160m.yaml --batch-size 8 --seq-len 2048\n"
                       "  sctrain bench-train --config configs/160m.yaml --batch-size 2 --seq-len 8192 \\\n"
                       "      --set model.attention=sigmoid\n"
                       "scripts/bench_train.sh runs ours and the Hugging Face BERT peer side by side.");
                   cmd.add_option("--config", a->config, "YAML config (configs/160m.yaml)")->required();
                   cmd.add_option("--set", a->sets, "override a config key (repeatable)");
                   cmd.add_option("--batch-size", a->o.batch_size, "sequences per micro-batch")->capture_default_str();
                   cmd.add_option("--seq-len", a->o.seq_len, "tokens per sequence (CLS included)")->capture_default_str();
                   cmd.add_option("--steps", a->o.steps, "timed optimizer steps")->capture_default_str();
                   cmd.add_option("--warmup", a->o.warmup, "untimed steps first")->capture_default_str();
                   cmd.add_option("--vocab", a->o.vocab_size, "vocabulary size (genes + specials)")->capture_default_str();
                   cmd.add_option("--json", a->o.json_out, "also append the JSON line to this file");
                   return [a]() -> int {
                     train::Config cfg = train::load_config(a->config);
                     for (const auto& s : a->sets) train::apply_override(cfg, s);
                     return train::bench_train(cfg, a->o);
                   };
                 }});

}  // namespace sctrain::app
