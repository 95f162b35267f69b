// attention_bench [--json FILE] [--fp16] [--quick] ...: the same as `sctrain bench attention`.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <cstdio>

#include "kernels/attention_bench.h"

int main(int argc, char** argv) {
  sctrain::kernels::AttentionBenchOptions opts;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) opts.json = argv[++i];
    else if (!std::strcmp(argv[i], "--fp16")) opts.fp16 = true;
    else if (!std::strcmp(argv[i], "--quick")) opts.seqlens = {2048, 8192};
    else if (!std::strcmp(argv[i], "--no-padded")) opts.padded = false;
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) opts.reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc) opts.tokens = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--width") && i + 1 < argc) opts.width = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--head-dims")) {
      opts.head_dims.clear();
      while (i + 1 < argc && argv[i + 1][0] != '-') opts.head_dims.push_back(std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--seqlens")) {
      opts.seqlens.clear();
      while (i + 1 < argc && argv[i + 1][0] != '-') opts.seqlens.push_back(std::atoi(argv[++i]));
    }
    else {
      std::fprintf(stderr, "usage: attention_bench [--json FILE] [--fp16] [--quick] [--no-padded] [--seqlens N...] [--head-dims D...] [--reps R] [--tokens B*N] [--width H*D]\n");
      return 2;
    }
  }
  try {
    return sctrain::kernels::run_attention_bench(opts);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_bench: %s\n", e.what());
    return 2;
  }
}
