// sctrain bench: measurements that docs/benchmarks.md records.
//   bench attention  the sigmoid-attention kernel against LibTorch's softmax attention
//   bench read       reading batches of cells from an .h5ad (scripts/bench_reader.py runs the peer)
#include "command.h"
#include "io/read_bench.h"
#include "kernels/attention_bench.h"

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
  return [att, opts, read, ropts]() -> int {
    if (att->parsed()) return sctrain::kernels::run_attention_bench(*opts);
    if (read->parsed()) return sctrain::io::run_read_bench(*ropts);
    return 1;
  };
}

}  // namespace

SCTRAIN_COMMAND({"bench", "Benchmarks: `bench attention` (GPU kernel), `bench read` (h5ad reading)", 90, setup});
