// The loader on a hand-made in-memory corpus: coverage, sharding, padding, budgets,
// resume, determinism across thread counts, fill, binned mode, errors.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "data/hash_rng.h"
#include "data/loader.h"

using namespace sctrain::data;

// n_cells cells over n_genes genes; cell i expresses 1 + (i*7 % max_genes) genes, values 1..5.
static PreparedCorpus make_corpus(int64_t n_cells, int32_t n_genes, int32_t max_genes, TokenMode mode = TokenMode::Rank,
                                  int32_t max_len = 64) {
  PreparedCorpus c;
  std::vector<std::string> names;
  for (int32_t g = 0; g < n_genes; ++g) names.push_back("G" + std::to_string(g));
  c.vocab = Vocabulary::from_genes(names);
  c.gene_medians.assign(c.vocab.size(), 1.0);
  c.tokenize.mode = mode;
  c.tokenize.max_len = max_len;
  SourceInfo s;
  s.path = "synthetic";
  s.matrix = "X";
  s.n_cells = n_cells;
  s.n_genes = n_genes;
  for (int32_t g = 0; g < n_genes; ++g) s.column_token.push_back(kNumSpecial + g);
  c.sources.push_back(s);
  c.n_cells = n_cells;
  auto rows = std::make_shared<std::vector<sctrain::io::CellRows>>(1);
  auto& r = (*rows)[0];
  r.n_cols = n_genes;
  HashStream rng(1);
  for (int64_t i = 0; i < n_cells; ++i) {
    int32_t k = 1 + static_cast<int32_t>(i * 7 % max_genes);
    int32_t start = static_cast<int32_t>(rng.below(n_genes));
    std::vector<int32_t> cols;
    for (int32_t j = 0; j < k; ++j) cols.push_back((start + j * 3) % n_genes);
    std::sort(cols.begin(), cols.end());
    cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
    for (int32_t col : cols) {
      r.indices.push_back(col);
      r.values.push_back(static_cast<float>(1 + rng.below(5)));
    }
    r.indptr.push_back(static_cast<int64_t>(r.indices.size()));
    int64_t len = 1 + std::min<int64_t>(cols.size(), max_len - 1);
    c.stats.n_cells++;
    c.stats.tokens_total += len;
    c.stats.tokens_max = std::max(c.stats.tokens_max, len);
  }
  c.rows = rows;
  return c;
}

static std::vector<Batch> take(Loader& l, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(l.next());
  return out;
}

static bool same(const Batch& a, const Batch& b) {
  return a.batch_size == b.batch_size && a.seq_len == b.seq_len && a.tokens == b.tokens && a.bins == b.bins &&
         a.lengths == b.lengths && a.labels == b.labels && a.cell_ids == b.cell_ids;
}

TEST(Loader, EpochCoversEveryTrainCellOnceAndPadsToLongest) {
  PreparedCorpus c = make_corpus(500, 300, 90);
  LoaderConfig cfg;
  cfg.batch_size = 16;
  cfg.val_fraction = 0.1;
  Loader l(c, cfg);
  EXPECT_EQ(l.n_train_cells() + l.n_val_cells(), 500);
  std::multiset<int64_t> seen;
  const int64_t nb = l.batches_per_epoch();
  for (int64_t b = 0; b < nb; ++b) {
    Batch x = l.next();
    ASSERT_LE(x.batch_size, 16);
    int32_t longest = 0;
    for (int64_t i = 0; i < x.batch_size; ++i) {
      seen.insert(x.cell_ids[i]);
      EXPECT_FALSE(is_validation_cell(x.cell_ids[i], 0.1, 0));
      longest = std::max(longest, x.lengths[i]);
      // Unmasked view: CLS, then genes (tokens or labels), then padding.
      EXPECT_EQ(x.tokens[i * x.seq_len], kCls);
      EXPECT_EQ(x.labels[i * x.seq_len], kIgnoreLabel);
      for (int64_t p = x.lengths[i]; p < x.seq_len; ++p) {
        EXPECT_EQ(x.tokens[i * x.seq_len + p], kPad);
        EXPECT_EQ(x.labels[i * x.seq_len + p], kIgnoreLabel);
      }
      // The cell's expressed gene count: lengths = 1 + nnz of its row, truncated to max_len 64.
      const auto& rows = (*c.rows)[0];
      EXPECT_EQ(x.lengths[i], std::min<int64_t>(64, 1 + rows.row_nnz(x.cell_ids[i])));
    }
    EXPECT_EQ(x.seq_len, longest);
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), l.n_train_cells());
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), seen.size());
  EXPECT_EQ(l.state().epoch, 1);
  EXPECT_EQ(l.state().position, 0);
}

TEST(Loader, TokenBudgetBoundsPaddedTokens) {
  PreparedCorpus c = make_corpus(400, 300, 60);
  LoaderConfig cfg;
  cfg.batch_size = 1000;
  cfg.token_budget = 256;
  Loader l(c, cfg);
  int64_t real = 0, padded = 0;
  for (int64_t b = 0; b < l.batches_per_epoch(); ++b) {
    Batch x = l.next();
    EXPECT_LE(x.batch_size * x.seq_len, 256);
    real += x.n_tokens();
    padded += x.batch_size * x.seq_len;
  }
  EXPECT_GT(static_cast<double>(real) / padded, 0.9);  // bucketing keeps padding low
}

TEST(Loader, ShardsAreDisjointAndCoverTheTrainSet) {
  PreparedCorpus c = make_corpus(301, 200, 40);
  LoaderConfig cfg;
  cfg.batch_size = 8;
  cfg.threads = 0;
  std::set<int64_t> all;
  int64_t total = 0;
  for (int rank = 0; rank < 3; ++rank) {
    Loader l(c, cfg, rank, 3);
    for (int64_t b = 0; b < l.batches_per_epoch(); ++b)
      for (int64_t id : l.next().cell_ids) {
        EXPECT_TRUE(all.insert(id).second) << "cell " << id << " on two ranks";
        ++total;
      }
  }
  int64_t train = 0;
  for (int64_t i = 0; i < 301; ++i) train += !is_validation_cell(i, cfg.val_fraction, 0);
  EXPECT_EQ(total, train);
}

TEST(Loader, ResumeGivesTheSameBatches) {
  PreparedCorpus c = make_corpus(300, 200, 50);
  LoaderConfig cfg;
  cfg.batch_size = 12;
  cfg.seed = 77;
  Loader a(c, cfg);
  const int64_t nb = a.batches_per_epoch();
  take(a, static_cast<int>(nb) + 3);  // into epoch 1
  LoaderState s = a.state();
  EXPECT_EQ(s.epoch, 1);
  EXPECT_EQ(s.position, 3);
  auto want = take(a, 8);
  Loader b(c, cfg);
  b.restore(LoaderState::from_json(s.to_json()));
  auto got = take(b, 8);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(same(want[i], got[i])) << i;
  LoaderState other = s;
  other.seed = 1;
  EXPECT_THROW(b.restore(other), std::invalid_argument);
}

TEST(Loader, SameBatchesWhateverTheThreadsAndEpochsDiffer) {
  PreparedCorpus c = make_corpus(200, 150, 30);
  LoaderConfig cfg;
  cfg.batch_size = 10;
  cfg.threads = 0;
  Loader a(c, cfg);
  cfg.threads = 3;
  cfg.prefetch = 2;
  Loader b(c, cfg);
  const int n = static_cast<int>(a.batches_per_epoch());
  auto x = take(a, 2 * n), y = take(b, 2 * n);
  for (int i = 0; i < 2 * n; ++i) EXPECT_TRUE(same(x[i], y[i])) << i;
  // Epoch 1 is a different order from epoch 0.
  std::vector<int64_t> e0, e1;
  for (int i = 0; i < n; ++i) e0.insert(e0.end(), x[i].cell_ids.begin(), x[i].cell_ids.end());
  for (int i = n; i < 2 * n; ++i) e1.insert(e1.end(), x[i].cell_ids.begin(), x[i].cell_ids.end());
  EXPECT_NE(e0, e1);
}

TEST(Loader, ValidationBatchesAreFixed) {
  PreparedCorpus c = make_corpus(400, 150, 30);
  LoaderConfig cfg;
  cfg.val_fraction = 0.2;
  Loader l(c, cfg);
  auto v1 = l.validation_batches();
  l.next();
  auto v2 = l.validation_batches();
  ASSERT_EQ(v1.size(), v2.size());
  int64_t cells = 0;
  for (size_t i = 0; i < v1.size(); ++i) {
    EXPECT_TRUE(same(v1[i], v2[i]));
    for (int64_t id : v1[i].cell_ids) EXPECT_TRUE(is_validation_cell(id, 0.2, 0));
    cells += v1[i].batch_size;
  }
  EXPECT_EQ(cells, l.n_val_cells());
}

TEST(Loader, FillToMaxLenWithUnexpressedGenes) {
  PreparedCorpus c = make_corpus(100, 150, 20, TokenMode::Binned, 48);
  LoaderConfig cfg;
  cfg.fill_to_max_len = true;
  cfg.mask = false;
  Loader l(c, cfg);
  Batch x = l.next();
  EXPECT_EQ(x.seq_len, 48);
  for (int64_t i = 0; i < x.batch_size; ++i) {
    EXPECT_EQ(x.lengths[i], 48);
    const int64_t nnz = (*c.rows)[0].row_nnz(x.cell_ids[i]);
    std::set<int32_t> genes;
    for (int64_t p = 1; p < 48; ++p) {
      int32_t t = x.tokens[i * 48 + p];
      EXPECT_GE(t, kNumSpecial);
      EXPECT_TRUE(genes.insert(t).second) << "gene twice in a cell";
      uint8_t bin = static_cast<uint8_t>(x.bins[i * 48 + p]);
      if (p <= nnz) {
        EXPECT_GE(bin, 1);
        EXPECT_LE(bin, 50);
      } else {
        EXPECT_EQ(bin, 0);  // filled genes are not expressed
      }
    }
    EXPECT_EQ(x.bins[i * 48], 0);  // CLS
  }
}

TEST(Loader, NaNNamesTheSourceAndCell) {
  PreparedCorpus c = make_corpus(50, 100, 10);
  auto rows = std::make_shared<std::vector<sctrain::io::CellRows>>(*c.rows);
  (*rows)[0].values[(*rows)[0].indptr[7]] = std::numeric_limits<float>::quiet_NaN();
  c.rows = rows;
  LoaderConfig cfg;
  cfg.val_fraction = 0;
  try {
    Loader l(c, cfg);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("synthetic"), std::string::npos) << m;
    EXPECT_NE(m.find("cell 7"), std::string::npos) << m;
    EXPECT_NE(m.find("NaN"), std::string::npos) << m;
  }
}

TEST(Loader, RankWithoutCellsAndBadArguments) {
  PreparedCorpus c = make_corpus(3, 100, 10);
  LoaderConfig cfg;
  cfg.val_fraction = 0;
  EXPECT_THROW(Loader(c, cfg, 5, 4), std::invalid_argument);
  EXPECT_THROW(Loader(c, cfg, 3, 4), std::runtime_error);  // 3 cells over 4 ranks: rank 3 has none
  cfg.batch_size = 0;
  EXPECT_THROW(Loader(c, cfg), std::invalid_argument);
}

TEST(Loader, WorkerExceptionReachesTheCaller) {
  PreparedCorpus c = make_corpus(200, 100, 20);
  LoaderConfig cfg;
  cfg.batch_size = 4;
  cfg.fail_at_batch = 3;
  cfg.threads = 2;
  Loader l(c, cfg);
  take(l, 3);
  EXPECT_THROW(l.next(), std::runtime_error);
  l.next();  // later batches still come; the destructor joins cleanly
}
