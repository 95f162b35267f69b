// Gathering a CSR row, rank ordering, truncation, expression bins: hand-checked cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "data/tokenizer.h"

using namespace sctrain::data;

namespace {
// The rank order by definition: (-normalised / median, token), sorted in double precision.
std::vector<std::pair<double, int32_t>> reference_order(const CellGenes& c, const std::vector<double>& med) {
  std::vector<std::pair<double, int32_t>> ref;
  for (size_t i = 0; i < c.tokens.size(); ++i)
    ref.push_back({-(static_cast<double>(c.values[i]) * 1e4 / c.total / med[c.tokens[i]]), c.tokens[i]});
  std::sort(ref.begin(), ref.end());
  return ref;
}
}  // namespace

TEST(GatherCell, MapsDropsAndSumsDuplicates) {
  // columns 0..4, values {2, -1, 4, 3, 1}; column 2 unmapped; columns 0 and 3 share token 7.
  std::vector<int32_t> idx{0, 1, 2, 3, 4};
  std::vector<float> val{2, -1, 4, 3, 1};
  std::vector<int32_t> col_tok{7, 8, -1, 7, 6};
  CellGenes c;
  int64_t neg = 0;
  gather_cell(idx, val, col_tok, true, c, &neg);
  EXPECT_EQ(neg, 1);
  EXPECT_DOUBLE_EQ(c.total, 10.0);  // positive values, mapped or not
  ASSERT_EQ(c.tokens, (std::vector<int32_t>{7, 6}));  // first columns' order
  EXPECT_EQ(c.values, (std::vector<float>{5, 1}));
  // Again (the summing scratch is reused between cells).
  gather_cell(idx, val, col_tok, true, c, &neg);
  EXPECT_EQ(c.values, (std::vector<float>{5, 1}));
}

TEST(GatherCell, TotalIsTheInOrderDoubleSumOfPositiveValues) {
  // Counts (summed as integers), fractions, huge values, a mix and values around 2^31: the in-order
  // double sum that scipy's row sum gives, bit for bit.
  std::mt19937 rnd(7);
  std::uniform_real_distribution<float> frac(-0.5f, 3.0f);
  const float edge[] = {0x1p31f, 2147483520.0f, -0.0f, 0.0f, 1.0f, -2.0f};  // around 2^31, signed zeros
  for (int kind = 0; kind < 5; ++kind) {
    for (int rep = 0; rep < 50; ++rep) {
      const int n = 1 + static_cast<int>(rnd() % 300);
      std::vector<int32_t> idx(n), col_tok(n);
      std::vector<float> val(n);
      for (int i = 0; i < n; ++i) {
        idx[i] = i;
        col_tok[i] = i % 7 == 3 ? -1 : 5 + i;
        if (kind == 0) val[i] = static_cast<float>(static_cast<int>(rnd() % 40) - 5);     // counts (and negatives)
        if (kind == 1) val[i] = frac(rnd);                                               // fractions
        if (kind == 2) val[i] = static_cast<float>(rnd() % 3) * 0x1p40f + 1.0f;          // huge whole numbers
        if (kind == 3) val[i] = i % 2 ? static_cast<float>(rnd() % 9) : frac(rnd);       // mixed
        if (kind == 4) val[i] = rep % 2 ? edge[rnd() % 6] : edge[1 + rnd() % 5];          // edges (2^31: odd reps)
      }
      double want = 0;
      for (float v : val)
        if (v > 0) want += v;
      CellGenes c;
      gather_cell(idx, val, col_tok, false, c);
      EXPECT_EQ(c.total, want) << "kind " << kind << " rep " << rep;
    }
  }
}

TEST(GatherCell, NaNThrows) {
  std::vector<int32_t> idx{0, 1};
  std::vector<float> val{1, std::numeric_limits<float>::quiet_NaN()};
  std::vector<int32_t> col_tok{5, 6};
  CellGenes c;
  EXPECT_THROW(gather_cell(idx, val, col_tok, false, c), std::invalid_argument);
}

TEST(TokenizeCell, RankByNormalisedOverMedian) {
  CellGenes c{{5, 6, 7, 8}, {10, 20, 30, 40}, 100};
  // normalised: 1000, 2000, 3000, 4000; medians 1, 4, 1, 2 -> scores 1000, 500, 3000, 2000
  std::vector<double> med(9, 0.0);
  med[5] = 1, med[6] = 4, med[7] = 1, med[8] = 2;
  TokenizeConfig cfg;
  TokenizedCell t;
  tokenize_cell(c, med, cfg, t);
  EXPECT_EQ(t.genes, (std::vector<int32_t>{7, 8, 5, 6}));
  EXPECT_TRUE(t.bins.empty());
  cfg.max_len = 3;  // CLS + 2 genes
  tokenize_cell(c, med, cfg, t);
  EXPECT_EQ(t.genes, (std::vector<int32_t>{7, 8}));
}

TEST(TokenizeCell, TiesGoToSmallerTokenAndZeroMedianCountsAsOne) {
  CellGenes c{{9, 6, 8}, {5, 5, 5}, 15};
  std::vector<double> med(10, 1.0);
  med[8] = 0;  // never expressed in the corpus: treated as 1
  TokenizedCell t;
  tokenize_cell(c, med, TokenizeConfig{}, t);
  EXPECT_EQ(t.genes, (std::vector<int32_t>{6, 8, 9}));
}

TEST(ExpressionBins, QuantileOfTheCell) {
  std::vector<uint8_t> b;
  // less-than counts 0,1,1,3 of n=4; n_bins 5: 1 + 4*less/4
  expression_bins(std::vector<float>{1, 2, 2, 5}, 5, b);
  EXPECT_EQ(b, (std::vector<uint8_t>{1, 2, 2, 4}));
  // n_bins 51, three values: 1 + 50*0/3, 1 + 50*1/3, 1 + 50*2/3
  expression_bins(std::vector<float>{3, 1, 2}, 51, b);
  EXPECT_EQ(b, (std::vector<uint8_t>{34, 1, 17}));
  EXPECT_THROW(expression_bins(std::vector<float>{1}, 1, b), std::invalid_argument);
}

TEST(TokenizeCell, BinnedKeepsBinsWithTheirGenes) {
  CellGenes c{{5, 6, 7, 8}, {10, 20, 30, 40}, 100};
  std::vector<double> med(9, 1.0);
  med[6] = 4, med[8] = 2;  // scores 1000, 500, 3000, 2000 -> order 7, 8, 5, 6
  TokenizeConfig cfg;
  cfg.mode = TokenMode::Binned;
  cfg.n_bins = 5;  // bins of 10,20,30,40: 1,2,3,4
  TokenizedCell t;
  tokenize_cell(c, med, cfg, t);
  EXPECT_EQ(t.genes, (std::vector<int32_t>{7, 8, 5, 6}));
  EXPECT_EQ(t.bins, (std::vector<uint8_t>{3, 4, 1, 2}));
}

TEST(TokenMode, Parse) {
  EXPECT_EQ(parse_mode("rank"), TokenMode::Rank);
  EXPECT_EQ(parse_mode("binned"), TokenMode::Binned);
  EXPECT_THROW(parse_mode("ranks"), std::invalid_argument);
}

// Cells of >= 64 genes take the radix-sort path: same order as a plain sort by
// (score desc, token asc), ties included.
TEST(TokenizeCell, LongCellsMatchAPlainSort) {
  for (int trial = 0; trial < 20; ++trial) {
    CellGenes c;
    std::vector<double> med(3000, 0.0);
    uint64_t x = 12345 + trial;
    auto rnd = [&x] { x = x * 6364136223846793005ULL + 1442695040888963407ULL; return x >> 33; };
    for (int32_t t = 5; t < 3000; ++t) med[t] = 0.5 + static_cast<double>(rnd() % 4);  // few distinct medians
    std::set<int32_t> used;
    while (used.size() < 300) used.insert(5 + static_cast<int32_t>(rnd() % 2995));
    for (int32_t t : used) {
      c.tokens.push_back(t);
      c.values.push_back(static_cast<float>(1 + rnd() % 3));  // many equal values: many exact ties
    }
    std::reverse(c.tokens.begin(), c.tokens.end());  // input not in token order
    c.total = 0;
    for (float v : c.values) c.total += v;
    const auto ref = reference_order(c, med);
    TokenizeConfig cfg;
    cfg.max_len = 201;
    TokenizedCell t;
    tokenize_cell(c, med, cfg, t);
    ASSERT_EQ(t.genes.size(), 200u);
    for (size_t i = 0; i < 200; ++i) ASSERT_EQ(t.genes[i], ref[i].second) << "trial " << trial << " position " << i;
  }
}

// Cells of 65,536 genes sort 4-byte items (16 position bits), longer ones 8-byte items: both
// match a plain sort, with exact ties and all genes kept (max_len above the length).
TEST(TokenizeCell, CellsAroundSixtyFiveThousandGenesMatchAPlainSort) {
  for (int32_t n : {65536, 65537, 70000}) {
    CellGenes c;
    std::vector<double> med(n + 5, 0.0);
    uint64_t x = 99 + n;
    auto rnd = [&x] { x = x * 6364136223846793005ULL + 1442695040888963407ULL; return x >> 33; };
    for (int32_t t = n + 4; t >= 5; --t) {
      med[t] = 0.5 + static_cast<double>(rnd() % 50);
      c.tokens.push_back(t);
      c.values.push_back(static_cast<float>(1 + rnd() % 4));
    }
    c.total = 0;
    for (float v : c.values) c.total += v;
    const auto ref = reference_order(c, med);
    TokenizeConfig cfg;
    cfg.max_len = n + 10;
    TokenizedCell t;
    tokenize_cell(c, med, cfg, t);
    ASSERT_EQ(t.genes.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(t.genes[i], ref[i].second) << n << " genes, position " << i;
  }
}

// Scores that differ only in their last bits (medians 1 ulp apart) share the radix sort's
// 32-bit prefix: the full score and then the token must still decide.
TEST(TokenizeCell, NearTiesOrderedByTheFullScore) {
  CellGenes c;
  std::vector<double> med(400, 0.0);
  for (int32_t t = 5; t < 400; ++t) {
    med[t] = 1.0;
    for (int k = 0; k < (t * 7) % 5; ++k) med[t] = std::nextafter(med[t], 2.0);
    c.tokens.push_back(t);
    c.values.push_back(static_cast<float>(1 + t % 2));
  }
  std::reverse(c.tokens.begin(), c.tokens.end());
  c.total = 0;
  for (float v : c.values) c.total += v;
  const auto ref = reference_order(c, med);
  TokenizedCell t;
  tokenize_cell(c, med, TokenizeConfig{}, t);
  ASSERT_EQ(t.genes.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(t.genes[i], ref[i].second) << "position " << i;
}

// A long run of equal scores (every gene once, same value, same median): token order.
TEST(TokenizeCell, ManyEqualScoresGoInTokenOrder) {
  CellGenes c;
  for (int32_t t = 3000; t >= 5; --t) {
    c.tokens.push_back(t);
    c.values.push_back(2.0f);
  }
  c.total = 2.0 * c.tokens.size();
  std::vector<double> med(3001, 0.5);
  TokenizedCell t;
  tokenize_cell(c, med, TokenizeConfig{}, t);
  ASSERT_EQ(t.genes.size(), 2047u);
  for (size_t i = 0; i < t.genes.size(); ++i) ASSERT_EQ(t.genes[i], static_cast<int32_t>(5 + i));
}
