// Stage timings of h5ad -> batches (disabled by default; run with
// --gtest_also_run_disabled_tests --gtest_filter='*Timing*'). Prints, asserts nothing.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "data/corpus.h"
#include "data/gene_table.h"
#include "data/loader.h"
#include "data/source_reader.h"
#include "test_data.h"
#include "util/log.h"

using namespace sctrain::data;
using clk = std::chrono::steady_clock;
static double since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

TEST(PipelineTiming, DISABLED_Stages) {
  std::string file = sctrain::testing::shared_data("kang_pbmc_ctrl.h5ad");
  if (const char* f = std::getenv("SCTRAIN_TIMING_FILE")) file = f;
  if (file.empty()) GTEST_SKIP();
  sctrain::log::set_level(sctrain::log::Level::Debug);
  auto t = clk::now();
  GeneTable table = GeneTable::load(sctrain::testing::project_data("genes/human_genes.tsv"));
  std::printf("gene table: %.3f s\n", since(t));
  t = clk::now();
  {
    OpenedMatrix m = open_matrix(file, "X");
    int64_t nnz = 0;
    for_each_chunk(m.matrix, 1024, [&](const sctrain::io::CellRows& r, int64_t) { nnz += r.indices.size(); });
    std::printf("read X (chunks of 1024): %.3f s, %lld nnz\n", since(t), (long long)nnz);
  }
  PrepareOptions o;
  o.sources = {parse_source(file)};
  o.gene_table = sctrain::testing::project_data("genes/human_genes.tsv");
  o.keep_rows = true;
  o.progress = false;
  t = clk::now();
  PreparedCorpus c = prepare_corpus(o);
  std::printf("prepare: %.3f s\n", since(t));
  LoaderConfig cfg;
  cfg.val_fraction = 0;
  auto t2 = clk::now();
  Loader l(c, cfg);
  std::printf("loader tokenize: %.3f s\n", since(t2));
  t2 = clk::now();
  int64_t tokens = 0;
  for (int64_t b = 0; b < l.batches_per_epoch(); ++b) tokens += l.next().n_tokens();
  std::printf("batches: %.3f s; total %.3f s, %lld tokens\n", since(t2), since(t), (long long)tokens);
}
