// prepare_corpus on the project's real files; figures cross-checked with
// scripts/tokenize_baseline.py (numpy/anndata, written independently of the C++).
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "data/corpus.h"
#include "data/gene_table.h"
#include "data/loader.h"
#include "prepare_options.h"
#include "test_data.h"

using namespace sctrain::data;
using sctrain::testing::prepare_options;
using sctrain::testing::project_data;


static std::vector<std::string> names(const PreparedCorpus& c, const TokenizedCell& t, size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < std::min(n, t.genes.size()); ++i) out.push_back(c.vocab.name(t.genes[i]));
  return out;
}

TEST(ParseSource, MatrixSuffix) {
  EXPECT_EQ(parse_source("a.h5ad").matrix, "X");
  EXPECT_EQ(parse_source("a.h5ad", "raw/X").matrix, "raw/X");
  auto s = parse_source("dir:x/a.h5ad:layers/counts");
  EXPECT_EQ(s.path, "dir:x/a.h5ad");
  EXPECT_EQ(s.matrix, "layers/counts");
  EXPECT_EQ(parse_source("a.h5ad:raw/X").matrix, "raw/X");
  EXPECT_EQ(parse_source("odd:name.h5ad").path, "odd:name.h5ad");
}

// Expected tokens: scripts/tokenize_baseline.py data/pbmc68k_reduced.h5ad --cells 0,1,2,350,699 --top 12
TEST(PrepareFiles, Pbmc68kRankTokensMatchNumpy) {
  PreparedCorpus c = prepare_corpus(prepare_options({project_data("pbmc68k_reduced.h5ad")}));
  EXPECT_EQ(c.stats.n_cells, 700);
  EXPECT_EQ(c.vocab.n_genes(), 765);
  EXPECT_EQ(c.sources[0].genes_mapped, 751);
  EXPECT_EQ(c.sources[0].genes_unmapped.size(), 14u);
  EXPECT_NEAR(c.stats.tokens_mean, 250.143, 0.0005);
  EXPECT_EQ(c.stats.tokens_max, 410);
  auto t = tokenize_cells(c, {0, 1, 2, 350, 699});
  EXPECT_EQ(names(c, t[0], 12),
            (std::vector<std::string>{"ENSG00000133246", "ENSG00000163131", "ENSG00000087086", "ENSG00000102265",
                                      "ENSG00000113269", "ENSG00000171223", "ENSG00000107738", "ENSG00000265972",
                                      "ENSG00000023191", "ENSG00000204482", "ENSG00000028137", "ENSG00000184900"}));
  EXPECT_EQ(names(c, t[1], 12),
            (std::vector<std::string>{"ENSG00000120438", "ENSG00000204482", "ENSG00000167851", "ENSG00000175489",
                                      "ENSG00000163131", "ENSG00000015475", "ENSG00000081237", "ENSG00000160213",
                                      "ENSG00000076944", "ENSG00000139644", "ENSG00000196154", "ENSG00000158869"}));
  EXPECT_EQ(names(c, t[2], 12),
            (std::vector<std::string>{"ENSG00000169583", "ENSG00000115523", "ENSG00000105374", "ENSG00000265972",
                                      "ENSG00000159674", "ENSG00000198821", "ENSG00000173762", "ENSG00000182054",
                                      "ENSG00000167085", "ENSG00000197540", "ENSG00000271503", "ENSG00000198668"}));
  EXPECT_EQ(names(c, t[3], 12),
            (std::vector<std::string>{"ENSG00000042493", "ENSG00000185608", "ENSG00000227507", "ENSG00000162144",
                                      "ENSG00000104894", "ENSG00000165527", "ENSG00000166428", "ENSG00000241468",
                                      "ENSG00000122986", "ENSG00000101182", "ENSG00000004779", "ENSG00000100823"}));
  EXPECT_EQ(names(c, t[4], 12),
            (std::vector<std::string>{"ENSG00000204257", "ENSG00000160593", "ENSG00000170345", "ENSG00000115738",
                                      "ENSG00000237541", "ENSG00000231389", "ENSG00000196735", "ENSG00000223865",
                                      "ENSG00000204287", "ENSG00000179344", "ENSG00000090382", "ENSG00000196126"}));
}

// Same checksum as tokenize_baseline.py's token_digest over all kept cells, CLS included.
static uint64_t token_digest(const PreparedCorpus& c) {
  const unsigned __int128 m = (uint64_t{1} << 61) - 1;
  unsigned __int128 d = 0;
  std::vector<int64_t> ids(c.n_cells);
  for (int64_t i = 0; i < c.n_cells; ++i) ids[i] = i;
  auto cells = tokenize_cells(c, ids);
  int64_t k = 0;  // index among kept (non-empty) cells
  for (const auto& t : cells) {
    if (t.genes.empty()) continue;
    std::vector<int32_t> all{kCls};
    all.insert(all.end(), t.genes.begin(), t.genes.end());
    for (size_t p = 0; p < all.size(); ++p) d = (d + static_cast<unsigned __int128>(all[p]) * (k * 1000003 + p + 1)) % m;
    ++k;
  }
  return static_cast<uint64_t>(d);
}

// Digests: scripts/tokenize_baseline.py FILE... --digest --max-len N
TEST(PrepareFiles, AllTokensMatchNumpyPbmc68k) {
  PreparedCorpus c = prepare_corpus(prepare_options({project_data("pbmc68k_reduced.h5ad")}));
  EXPECT_EQ(token_digest(c), 23718783077802146ULL);
}

TEST(PrepareFiles, AllTokensMatchNumpyPbmc3kDuplicatesSummed) {
  PrepareOptions o = prepare_options({project_data("pbmc3k_seurat.h5ad")}, false);  // tokens read back from the file
  PreparedCorpus c = prepare_corpus(o);
  EXPECT_EQ(c.vocab.n_genes(), 13685);             // 13714 columns, 29 share a gene after mapping
  EXPECT_EQ(c.sources[0].duplicate_columns, 29);
  EXPECT_EQ(c.sources[0].genes_unmapped.size(), 1328u);
  EXPECT_NEAR(c.stats.tokens_mean, 849.436, 0.0005);
  EXPECT_EQ(c.stats.tokens_max, 2048);
  EXPECT_EQ(token_digest(c), 542004060419391651ULL);
  o.tokenize.max_len = 256;
  o.keep_rows = true;
  EXPECT_EQ(token_digest(prepare_corpus(o)), 1138625698631723710ULL);
}

// kang_pbmc_ctrl names genes by Ensembl ID, pbmc3k_seurat by symbol: shared genes, one token.
// Figures: tokenize_baseline.py's mapping (set sizes) and --digest --max-len 512 on both files.
TEST(PrepareFiles, EnsemblAndSymbolFilesShareTokens) {
  SCTRAIN_REQUIRE_SHARED(kang, "kang_pbmc_ctrl.h5ad");
  PrepareOptions o = prepare_options({project_data("pbmc3k_seurat.h5ad"), kang});
  o.tokenize.max_len = 512;
  PreparedCorpus c = prepare_corpus(o);
  EXPECT_EQ(c.vocab.n_genes(), 13707);
  // 25 outdated Ensembl IDs are not in the table; 24 of them match through var/gene_symbol.
  EXPECT_EQ(c.sources[1].genes_unmapped.size(), 1u);
  std::set<int32_t> a(c.sources[0].column_token.begin(), c.sources[0].column_token.end());
  int64_t shared = 0;
  for (int32_t t : std::set<int32_t>(c.sources[1].column_token.begin(), c.sources[1].column_token.end())) shared += a.count(t);
  EXPECT_EQ(shared, 2489);
  // CD3E: pbmc3k column 8144 ("CD3E"), kang column 1535 ("ENSG00000198851").
  EXPECT_EQ(c.sources[0].column_token[8144], c.sources[1].column_token[1535]);
  EXPECT_EQ(c.vocab.name(c.sources[0].column_token[8144]), "ENSG00000198851");
  EXPECT_EQ(c.sources[1].first_cell, 2638);
  EXPECT_EQ(token_digest(c), 1351755730188233887ULL);
}

TEST(PrepareFiles, SaveLoadRoundTripAndLoaderReadsFiles) {
  PreparedCorpus c = prepare_corpus(prepare_options({project_data("pbmc68k_reduced.h5ad")}, false));
  const std::string dir = (std::filesystem::temp_directory_path() / ("sctrain_prep_" + std::to_string(::getpid()))).string();
  save_corpus(c, dir);
  for (const char* f : {"vocab.tsv", "gene_medians.tsv", "manifest.json", "columns_0.tsv"})
    EXPECT_TRUE(std::filesystem::exists(std::filesystem::path(dir) / f)) << f;
  PreparedCorpus d = load_corpus(dir);
  EXPECT_EQ(d.vocab.names(), c.vocab.names());
  EXPECT_EQ(d.gene_medians, c.gene_medians);  // exact: written with 17 digits
  EXPECT_EQ(d.sources[0].column_token, c.sources[0].column_token);
  EXPECT_EQ(d.stats.tokens_total, c.stats.tokens_total);
  EXPECT_EQ(token_digest(d), 23718783077802146ULL);
  // A loader over the loaded corpus reads the file itself; same batches as from kept rows.
  LoaderConfig cfg;
  Loader a(d, cfg);
  PreparedCorpus kept = prepare_corpus(prepare_options({project_data("pbmc68k_reduced.h5ad")}, true));
  Loader b(kept, cfg);
  for (int i = 0; i < 5; ++i) {
    Batch x = a.next(), y = b.next();
    EXPECT_EQ(x.tokens, y.tokens);
    EXPECT_EQ(x.cell_ids, y.cell_ids);
  }
  std::filesystem::remove_all(dir);
}

TEST(PrepareFiles, ClearErrors) {
  // A file without the chosen matrix: names file and matrix.
  try {
    prepare_corpus(prepare_options({project_data("pbmc68k_reduced.h5ad") + ":layers/counts"}));
    FAIL();
  } catch (const std::exception& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("pbmc68k_reduced.h5ad"), std::string::npos) << m;
    EXPECT_NE(m.find("layers/counts"), std::string::npos) << m;
  }
  // No gene in a given vocabulary.
  const std::string vocab = (std::filesystem::temp_directory_path() / "sctrain_tiny_vocab.tsv").string();
  Vocabulary::from_genes({"NOT_A_GENE"}).save(vocab);
  PrepareOptions o = prepare_options({project_data("pbmc68k_reduced.h5ad")});
  o.vocab_file = vocab;
  try {
    prepare_corpus(o);
    FAIL();
  } catch (const std::exception& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("none of the 765 genes"), std::string::npos) << m;
  }
  EXPECT_THROW(prepare_corpus(prepare_options({project_data("no_such_file.h5ad")})), std::exception);
}

TEST(PrepareFiles, ScaledMatrixNegativesCountedRawXWorks) {
  // orig_scanpy_pbmc68k_reduced: X is scaled (negatives), raw/X is log-normalised.
  PreparedCorpus x = prepare_corpus(prepare_options({project_data("orig_scanpy_pbmc68k_reduced.h5ad")}));
  EXPECT_GT(x.sources[0].negative_values, 0);
  PreparedCorpus raw = prepare_corpus(prepare_options({project_data("orig_scanpy_pbmc68k_reduced.h5ad:raw/X")}));
  EXPECT_EQ(raw.sources[0].negative_values, 0);
  EXPECT_EQ(raw.sources[0].matrix, "raw/X");
  EXPECT_EQ(raw.stats.n_cells, 700);
}

TEST(PrepareFiles, MouseNamesKeepTheirOwnTokensAndLegacyLayout) {
  SCTRAIN_REQUIRE_SHARED(mouse, "dentategyrus_200.h5ad");
  PreparedCorpus c = prepare_corpus(prepare_options({mouse}));
  EXPECT_EQ(c.vocab.n_genes(), c.sources[0].n_genes);
  EXPECT_GT(c.sources[0].genes_unmapped.size(), 0u);
  PreparedCorpus legacy = prepare_corpus(prepare_options({project_data("orig_scanpy_pbmc68k_reduced_legacy.h5ad:raw/X")}));
  PreparedCorpus modern = prepare_corpus(prepare_options({project_data("orig_scanpy_pbmc68k_reduced.h5ad:raw/X")}));
  EXPECT_EQ(token_digest(legacy), token_digest(modern));  // same data, 2018 layout
}

TEST(PrepareFiles, SummaryJson) {
  PreparedCorpus c = prepare_corpus(prepare_options({project_data("pbmc68k_reduced.h5ad"), project_data("pbmc3k_seurat.h5ad")}));
  YAML::Node j = YAML::Load(summary_json(c));
  EXPECT_EQ(j["n_cells"].as<int64_t>(), 700 + 2638);
  EXPECT_EQ(j["n_genes"].as<int64_t>(), c.vocab.n_genes());
  EXPECT_EQ(j["genes_unmapped"].as<int64_t>(), 14 + 1328);
  EXPECT_NEAR(j["tokens_mean"].as<double>(), c.stats.tokens_mean, 1e-6);
  EXPECT_EQ(j["tokens_max"].as<int64_t>(), 2048);
  ASSERT_EQ(j["files"].size(), 2u);
  EXPECT_EQ(j["files"][0]["genes_mapped"].as<int64_t>(), 751);
  EXPECT_EQ(j["files"][1]["duplicate_columns"].as<int64_t>(), 29);
  EXPECT_EQ(j["files"][1]["unmapped_first"].size(), 20u);
}

static std::string fixture(const std::string& name) { return std::string(SCTRAIN_SOURCE_DIR) + "/tests/data/fixtures/" + name; }

// 4 cells x (CD3E, MS4A1, NOT_A_GENE_X): [1 2 0], [0 0 0], [0 3 5], [4 0 1] (fixtures/README.md).
TEST(PrepareFiles, HandCheckedTinyFileWithAnEmptyCell) {
  PreparedCorpus c = prepare_corpus(prepare_options({fixture("empty_cell.h5ad")}));
  EXPECT_EQ(c.n_cells, 4);
  EXPECT_EQ(c.stats.n_cells, 3);
  EXPECT_EQ(c.sources[0].cells_empty, 1);
  EXPECT_EQ(c.sources[0].genes_unmapped, (std::vector<std::string>{"NOT_A_GENE_X"}));
  // Sorted canonical names: MS4A1 = ENSG00000156738, CD3E = ENSG00000198851, then the unknown name.
  ASSERT_EQ(c.vocab.names(), (std::vector<std::string>{"<pad>", "<cls>", "<mask>", "<unk>", "<eos>", "ENSG00000156738",
                                                       "ENSG00000198851", "NOT_A_GENE_X"}));
  // Normalised (x 1e4 / cell total): CD3E {1e4/3, 4e4/5}, MS4A1 {2e4/3, 3e4/8}, NOT {5e4/8, 1e4/5}.
  EXPECT_DOUBLE_EQ(c.gene_medians[6], (1.0 * 1e4 / 3 + 4.0 * 1e4 / 5) / 2);
  EXPECT_DOUBLE_EQ(c.gene_medians[5], (2.0 * 1e4 / 3 + 3.0 * 1e4 / 8) / 2);
  EXPECT_DOUBLE_EQ(c.gene_medians[7], (5.0 * 1e4 / 8 + 1.0 * 1e4 / 5) / 2);
  // Scores: cell 0 MS4A1 1.28 > CD3E 0.59; cell 2 NOT 1.52 > MS4A1 0.72; cell 3 CD3E 1.41 > NOT 0.48.
  auto t = tokenize_cells(c, {0, 1, 2, 3});
  EXPECT_EQ(t[0].genes, (std::vector<int32_t>{5, 6}));
  EXPECT_TRUE(t[1].genes.empty());
  EXPECT_EQ(t[2].genes, (std::vector<int32_t>{7, 5}));
  EXPECT_EQ(t[3].genes, (std::vector<int32_t>{6, 7}));
  // The loader never hands out the empty cell.
  LoaderConfig cfg;
  cfg.val_fraction = 0;
  Loader l(c, cfg);
  EXPECT_EQ(l.n_train_cells(), 3);
}

TEST(PrepareFiles, NaNInAFileIsAnErrorNamingFileMatrixAndCell) {
  try {
    prepare_corpus(prepare_options({fixture("nan_value.h5ad")}));
    FAIL() << "no error";
  } catch (const std::exception& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("nan_value.h5ad"), std::string::npos) << m;
    EXPECT_NE(m.find("X cell 2"), std::string::npos) << m;
    EXPECT_NE(m.find("NaN"), std::string::npos) << m;
  }
}

// Bins: numpy on the cell's expressed values, 1 + 50 * searchsorted(sorted, v, 'left') // n, listed
// in rank order (first 16 genes of cells 0 and 5 of pbmc68k_reduced).
TEST(PrepareFiles, BinnedModeMatchesNumpy) {
  PrepareOptions o = prepare_options({project_data("pbmc68k_reduced.h5ad")});
  o.tokenize.mode = TokenMode::Binned;
  PreparedCorpus c = prepare_corpus(o);
  EXPECT_EQ(token_digest(c), 23718783077802146ULL);  // same gene order as rank mode
  auto t = tokenize_cells(c, {0, 5});
  auto first16 = [](const std::vector<uint8_t>& b) { return std::vector<int>(b.begin(), b.begin() + 16); };
  ASSERT_EQ(t[0].bins.size(), 217u);  // 217 genes after CLS
  EXPECT_EQ(first16(t[0].bins), (std::vector<int>{46, 48, 50, 47, 42, 49, 44, 44, 44, 49, 37, 37, 49, 44, 37, 44}));
  EXPECT_EQ(first16(t[1].bins), (std::vector<int>{50, 48, 48, 47, 48, 49, 48, 50, 48, 48, 46, 50, 47, 47, 45, 45}));
}

// Two ranks over a real file with a token budget: disjoint shards covering the train split,
// batches within budget, and a resumed loader continuing with identical batches.
TEST(PrepareFiles, LoaderOnARealFileShardsBudgetsResume) {
  PreparedCorpus c = prepare_corpus(prepare_options({project_data("pbmc68k_reduced.h5ad")}));
  LoaderConfig cfg;
  cfg.batch_size = 64;
  cfg.token_budget = 4096;
  cfg.val_fraction = 0.1;
  cfg.seed = 3;
  std::set<int64_t> seen;
  int64_t train_total = 0;
  for (int rank = 0; rank < 2; ++rank) {
    Loader l(c, cfg, rank, 2);
    train_total += l.n_train_cells();
    for (int64_t b = 0; b < l.batches_per_epoch(); ++b) {
      Batch x = l.next();
      EXPECT_LE(x.batch_size * x.seq_len, 4096);
      for (int64_t id : x.cell_ids) {
        EXPECT_TRUE(seen.insert(id).second) << id;
        EXPECT_FALSE(is_validation_cell(id, 0.1, 0));
      }
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), train_total);
  int64_t val = 0;
  for (int64_t i = 0; i < 700; ++i) val += is_validation_cell(i, 0.1, 0);
  EXPECT_EQ(train_total, 700 - val);

  Loader a(c, cfg, 1, 2);
  for (int i = 0; i < 9; ++i) a.next();
  LoaderState s = a.state();
  std::vector<Batch> want;
  for (int i = 0; i < 20; ++i) want.push_back(a.next());
  Loader b(c, cfg, 1, 2);
  b.restore(s);
  for (int i = 0; i < 20; ++i) {
    Batch y = b.next();
    EXPECT_EQ(y.tokens, want[i].tokens) << i;
    EXPECT_EQ(y.labels, want[i].labels) << i;
    EXPECT_EQ(y.cell_ids, want[i].cell_ids) << i;
  }
}

// The medians (counts per gene and bucket, the middle buckets' values selected from) equal a plain
// computation: every normalised value of a gene sorted, numpy's median of them. PBMC 3k has 300+
// genes of >= 1024 values. Other thread counts split the cells and genes differently: same medians.
TEST(PrepareFiles, MediansEqualAPlainComputation) {
  std::vector<std::string> files = {project_data("pbmc3k_seurat.h5ad")};
  if (std::string kang = sctrain::testing::shared_data("kang_pbmc_ctrl.h5ad"); !kang.empty()) files.push_back(kang);
  for (const auto& f : files) {
    PreparedCorpus c = prepare_corpus(prepare_options({f}));
    const GatheredCells& g = *c.gathered;
    std::vector<std::vector<double>> values(c.vocab.size());
    for (int64_t i = 0; i < c.n_cells; ++i)
      for (size_t k = 0; k < g.tokens(i).size(); ++k)
        values[g.tokens(i)[k]].push_back(normalised(g.values(i)[k], g.totals[i], c.tokenize.target_sum));
    int64_t large = 0;
    for (int32_t t = kNumSpecial; t < c.vocab.size(); ++t) {
      std::vector<double>& v = values[t];
      std::sort(v.begin(), v.end());
      const size_t n = v.size();
      const double expect = n == 0 ? 0.0 : (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
      ASSERT_EQ(c.gene_medians[t], expect) << f << " token " << t << " (" << n << " values)";
      large += n >= 1024;
    }
    EXPECT_GT(large, 300) << f;
    for (int threads : {1, 3}) {
      PrepareOptions o = prepare_options({f}, false);
      o.threads = threads;
      EXPECT_EQ(prepare_corpus(o).gene_medians, c.gene_medians) << f << ", " << threads << " threads";
    }
  }
}
