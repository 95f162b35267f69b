// sctrain bench: measurements that docs/benchmarks.md records.
//   bench attention  the sigmoid-attention kernel against LibTorch's softmax attention
//   bench read       reading batches of cells from an .h5ad (scripts/bench_reader.py runs the peer)
//   bench train      training throughput of a config (scripts/bench_train.sh runs the peer)
#include "command.h"
#include "io/read_bench.h"
#include "kernels/attention_bench.h"
#include "train/config.h"
#include "train/trainer.h"

namespace {

std::function<int()> setup(CLI::App& cmd) {
  cmd.require_subcommand(1);
  auto opts = std::make_shared<sctrain::kernels::AttentionBenchOptions>();
  CLI::App* att = cmd.add_subcommand(
      "attention", "time sigmoid attention (ours) vs softmax SDPA (cuDNN, flash): B*N=16384, H*D=2048");
  att->add_option("--json", opts->json, "also write the results as JSON to this file");
  att->add_flag("--fp16", opts->fp16, "fp16 inputs (default bf16)");
  att->add_option("--seqlens", opts->seqlens, "sequence lengths N")->capture_default_str();
  att->add_option("--head-dims", opts->head_dims, "head dims d")->capture_default_str();
  att->add_option("--reps", opts->reps, "timed repetitions (median)")->capture_default_str();
  att->add_option("--tokens", opts->tokens, "B*N: tokens per call (B = tokens / N, at least 1)")->capture_default_str();
  att->add_option("--width", opts->width, "H*d: model width (H = width / d)")->capture_default_str();
  att->add_flag("!--no-padded", opts->padded, "skip the padded batches");

  auto ropts = std::make_shared<sctrain::io::ReadBenchOptions>();
  CLI::App* read = cmd.add_subcommand(
      "read", "cells/s, MB/s and peak memory reading batches of cells from an .h5ad");
  read->footer("sequential: consecutive batches over the whole matrix; random: --batches batches of\n"
               "--batch cells drawn uniformly. scripts/bench_reader.py runs this beside anndata's\n"
               "backed mode on the same file.");
  read->add_option("file", ropts->file, "the .h5ad file")->required();
  read->add_option("--matrix", ropts->matrix, "X, raw/X or layers/<name>")->capture_default_str();
  read->add_option("--mode", ropts->mode, "sequential or random")->capture_default_str();
  read->add_option("--batch", ropts->batch, "cells per batch")->capture_default_str();
  read->add_option("--batches", ropts->batches, "batches (random mode)")->capture_default_str();
  read->add_option("--seed", ropts->seed, "seed of the random rows")->capture_default_str();
  read->add_flag("--json", ropts->json, "print one JSON object");
  struct TrainArgs {
    std::string config;
    std::vector<std::string> sets;
    sctrain::train::BenchOptions o;
  };
  auto targs = std::make_shared<TrainArgs>();
  CLI::App* train = cmd.add_subcommand(
      "train", "training throughput of a config: tokens/s, TFLOP/s, peak GPU memory");
  train->footer(
      "Trains the config's model on synthetic full-length cells (random genes, 15% masked) for\n"
      "--warmup untimed and --steps timed optimizer steps, exactly as `pretrain` steps (bf16\n"
      "autocast on GPU, fused AdamW, gradient norms, clipping per config), and prints one JSON\n"
      "line: tokens_per_s, tflops (6*params*tokens + 12*n_layers*d_model*len^2 per sequence),\n"
      "mem_peak_gib, step_ms. SCTRAIN_PROFILE=N also prints a per-kernel GPU time table of N steps.\n\n"
      "  sctrain bench train --config configs/160m.yaml --batch-size 8 --seq-len 2048\n"
      "  sctrain bench train --config configs/160m.yaml --batch-size 2 --seq-len 8192 \\\n"
      "      --set model.attention=sigmoid\n"
      "scripts/bench_train.sh runs ours and the Hugging Face BERT peer side by side.");
  train->add_option("--config", targs->config, "YAML config (configs/160m.yaml)")->required();
  train->add_option("--set", targs->sets, "override a config key (repeatable)");
  train->add_option("--batch-size", targs->o.batch_size, "sequences per micro-batch")->capture_default_str();
  train->add_option("--seq-len", targs->o.seq_len, "tokens per sequence (CLS included)")->capture_default_str();
  train->add_option("--steps", targs->o.steps, "timed optimizer steps")->capture_default_str();
  train->add_option("--warmup", targs->o.warmup, "untimed steps first")->capture_default_str();
  train->add_option("--vocab", targs->o.vocab_size, "vocabulary size (genes + specials)")->capture_default_str();
  train->add_option("--json", targs->o.json_out, "also append the JSON line to this file");

  return [att, opts, read, ropts, train, targs]() -> int {
    if (att->parsed()) return sctrain::kernels::run_attention_bench(*opts);
    if (read->parsed()) return sctrain::io::run_read_bench(*ropts);
    if (train->parsed()) {
      sctrain::train::Config cfg = sctrain::train::load_config(targs->config);
      for (const auto& s : targs->sets) sctrain::train::apply_override(cfg, s);
      return sctrain::train::bench_train(cfg, targs->o);
    }
    return 1;
  };
}

}  // namespace

SCTRAIN_COMMAND({"bench", "Benchmarks: `bench read` (h5ad reading), `bench train` (training step), `bench attention` (GPU kernel)", 90, setup});
