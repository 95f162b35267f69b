// prepare with another corpus's statistics (--stats-from): its vocabulary and gene medians,
// on real files.
#include <gtest/gtest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>

#include "data/corpus.h"
#include "prepare_options.h"
#include "test_data.h"

using namespace sctrain::data;
using sctrain::testing::prepare_options;
using sctrain::testing::project_data;

namespace {
std::string temp_dir(const std::string& tag) {
  return (std::filesystem::temp_directory_path() / ("sctrain_" + tag + "_" + std::to_string(::getpid()))).string();
}
}  // namespace

// Kang (Ensembl IDs) tokenized with PBMC 3k's statistics (symbols): genes both have keep
// PBMC 3k's ids, kang's other genes are dropped and counted, medians are PBMC 3k's.
TEST(StatsFrom, KangWithPbmc3kVocabularyAndMedians) {
  SCTRAIN_REQUIRE_SHARED(kang, "kang_pbmc_ctrl.h5ad");
  PreparedCorpus base = prepare_corpus(prepare_options({project_data("pbmc3k_seurat.h5ad")}, false));
  const std::string dir = temp_dir("stats_base");
  save_corpus(base, dir);

  PrepareOptions o = prepare_options({kang});
  o.stats_from = dir;
  PreparedCorpus c = prepare_corpus(o);
  EXPECT_EQ(c.vocab.names(), base.vocab.names());
  EXPECT_EQ(c.gene_medians, base.gene_medians);  // reused, not recomputed on kang

  // Kang prepared on its own names each column's gene; the reused vocabulary must give that
  // gene PBMC 3k's id, or drop the column.
  PreparedCorpus own = prepare_corpus(prepare_options({kang}, false));
  const SourceInfo& si = c.sources[0];
  int64_t shared = 0, dropped = 0;
  for (int64_t j = 0; j < si.n_genes; ++j) {
    const int32_t expect = base.vocab.find(own.vocab.name(own.sources[0].column_token[j]));
    ASSERT_EQ(si.column_token[j], expect) << "column " << j;
    (expect < 0 ? dropped : shared)++;
  }
  EXPECT_GT(shared, 2400);
  EXPECT_GT(dropped, 0);
  EXPECT_EQ(si.genes_dropped, dropped);
  EXPECT_EQ(static_cast<int64_t>(si.genes_unmapped.size()), dropped);
  YAML::Node j = YAML::Load(summary_json(c));
  EXPECT_EQ(j["genes_dropped"].as<int64_t>(), dropped);
  EXPECT_EQ(j["stats_from"].as<std::string>(), dir);
  EXPECT_EQ(j["genes_without_median"].as<int64_t>(), 0);

  // The tokens are ranked by PBMC 3k's medians: cell 0 by hand.
  const GatheredCells& g = *c.gathered;
  std::vector<std::pair<double, int32_t>> ref;
  for (size_t k = 0; k < g.tokens(0).size(); ++k)
    ref.push_back({-(static_cast<double>(g.values(0)[k]) * 1e4 / g.totals[0] / base.gene_medians[g.tokens(0)[k]]), g.tokens(0)[k]});
  std::sort(ref.begin(), ref.end());
  TokenizedCell t = tokenize_cells(c, {0})[0];
  ASSERT_EQ(t.genes.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(t.genes[i], ref[i].second) << i;

  // Saved and loaded, the corpus remembers where its statistics came from.
  const std::string out = temp_dir("stats_out");
  save_corpus(c, out);
  PreparedCorpus back = load_corpus(out);
  EXPECT_EQ(back.gene_medians, base.gene_medians);
  EXPECT_EQ(back.stats_from, std::filesystem::absolute(dir).string());
  EXPECT_EQ(back.sources[0].genes_dropped, dropped);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(out);
}

// A gene of the reused vocabulary never expressed in that corpus has no median (0): counted,
// and ranked with median 1. Corpus A: pbmc68k with PBMC 3k's vocabulary (most genes unseen).
TEST(StatsFrom, GenesWithoutAMedianAreCountedAndRankedWithOne) {
  PreparedCorpus vocab_src = prepare_corpus(prepare_options({project_data("pbmc3k_seurat.h5ad")}, false));
  const std::string vdir = temp_dir("stats_vocab"), adir = temp_dir("stats_a");
  save_corpus(vocab_src, vdir);
  PrepareOptions oa = prepare_options({project_data("pbmc68k_reduced.h5ad")}, false);
  oa.vocab_file = vdir + "/vocab.tsv";
  save_corpus(prepare_corpus(oa), adir);
  PreparedCorpus a = load_corpus(adir);

  PrepareOptions o = prepare_options({project_data("pbmc3k_seurat.h5ad")});
  o.stats_from = adir;
  PreparedCorpus c = prepare_corpus(o);
  std::vector<uint8_t> expressed(c.vocab.size(), 0);
  for (int64_t i = 0; i < c.n_cells; ++i)
    for (int32_t t : c.gathered->tokens(i)) expressed[t] = 1;
  int64_t without = 0;
  for (int32_t t = kNumSpecial; t < c.vocab.size(); ++t) without += expressed[t] && a.gene_medians[t] == 0;
  EXPECT_GT(without, 1000);
  EXPECT_EQ(c.genes_without_median, without);
  EXPECT_EQ(YAML::Load(summary_json(c))["genes_without_median"].as<int64_t>(), without);

  const GatheredCells& g = *c.gathered;
  for (int64_t cell : {0, 7}) {
    std::vector<std::pair<double, int32_t>> ref;
    for (size_t k = 0; k < g.tokens(cell).size(); ++k) {
      const double m = a.gene_medians[g.tokens(cell)[k]];
      ref.push_back({-(static_cast<double>(g.values(cell)[k]) * 1e4 / g.totals[cell] / (m > 0 ? m : 1.0)), g.tokens(cell)[k]});
    }
    std::sort(ref.begin(), ref.end());
    TokenizedCell t = tokenize_cells(c, {cell})[0];
    ASSERT_EQ(t.genes.size(), std::min<size_t>(ref.size(), 2047));
    for (size_t i = 0; i < t.genes.size(); ++i) ASSERT_EQ(t.genes[i], ref[i].second) << cell << " " << i;
  }
  // Not both a vocabulary and statistics.
  o.vocab_file = vdir + "/vocab.tsv";
  EXPECT_THROW(prepare_corpus(o), std::invalid_argument);
  std::filesystem::remove_all(vdir);
  std::filesystem::remove_all(adir);
}
