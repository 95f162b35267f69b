// sctrain bench attention: the sigmoid-attention kernel against LibTorch's softmax attention.
#include "command.h"
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
  return [att, opts]() -> int {
    if (att->parsed()) return sctrain::kernels::run_attention_bench(*opts);
    return 1;
  };
}

}  // namespace

SCTRAIN_COMMAND({"bench", "benchmarks: `sctrain bench attention`", 90, setup});
