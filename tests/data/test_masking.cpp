// Masking and the train/validation split: deterministic in their keys, right proportions.
#include <gtest/gtest.h>

#include <numeric>

#include "data/hash_rng.h"
#include "data/loader.h"

using namespace sctrain::data;

static std::vector<int32_t> cell_tokens(int32_t n) {
  std::vector<int32_t> t(n);
  t[0] = kCls;
  for (int32_t i = 1; i < n; ++i) t[i] = kNumSpecial + 100 + i;
  return t;
}

TEST(MaskCell, FifteenPercentOfGenesNeverCls) {
  LoaderConfig cfg;
  const int32_t n = 201;  // CLS + 200 genes -> 30 chosen
  auto t = cell_tokens(n);
  const auto orig = t;
  std::vector<int32_t> labels(n);
  mask_cell(t.data(), labels.data(), n, 1000, cfg, 42, 3, 17);
  EXPECT_EQ(t[0], kCls);
  EXPECT_EQ(labels[0], kIgnoreLabel);
  int chosen = 0;
  for (int32_t i = 1; i < n; ++i) {
    if (labels[i] == kIgnoreLabel) {
      EXPECT_EQ(t[i], orig[i]);
    } else {
      ++chosen;
      EXPECT_EQ(labels[i], orig[i]);
      EXPECT_TRUE(t[i] == kMask || t[i] >= kNumSpecial) << t[i];
    }
  }
  EXPECT_EQ(chosen, 30);
}

TEST(MaskCell, AtLeastOneGeneAndDisabled) {
  LoaderConfig cfg;
  auto t = cell_tokens(3);  // 2 genes: round(0.3) = 0 -> 1
  std::vector<int32_t> labels(3);
  mask_cell(t.data(), labels.data(), 3, 1000, cfg, 1, 0, 0);
  EXPECT_EQ(std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l != kIgnoreLabel; }), 1);
  cfg.mask = false;
  t = cell_tokens(3);
  mask_cell(t.data(), labels.data(), 3, 1000, cfg, 1, 0, 0);
  EXPECT_EQ(t, cell_tokens(3));
  EXPECT_EQ(std::count(labels.begin(), labels.end(), kIgnoreLabel), 3);
}

TEST(MaskCell, DeterministicInSeedEpochCell) {
  LoaderConfig cfg;
  auto run = [&](uint64_t seed, int64_t epoch, int64_t cell) {
    auto t = cell_tokens(101);
    std::vector<int32_t> labels(101);
    mask_cell(t.data(), labels.data(), 101, 5000, cfg, seed, epoch, cell);
    return std::make_pair(t, labels);
  };
  EXPECT_EQ(run(7, 2, 9), run(7, 2, 9));
  EXPECT_NE(run(7, 2, 9).second, run(7, 3, 9).second);
  EXPECT_NE(run(7, 2, 9).second, run(7, 2, 10).second);
  EXPECT_NE(run(7, 2, 9).second, run(8, 2, 9).second);
}

TEST(MaskCell, EightyTenTen) {
  LoaderConfig cfg;
  int64_t masked = 0, random = 0, kept = 0;
  for (int64_t cell = 0; cell < 2000; ++cell) {
    auto t = cell_tokens(101);
    const auto orig = t;
    std::vector<int32_t> labels(101);
    mask_cell(t.data(), labels.data(), 101, 20000, cfg, 5, 0, cell);
    for (int i = 1; i < 101; ++i) {
      if (labels[i] == kIgnoreLabel) continue;
      if (t[i] == kMask) ++masked;
      else if (t[i] == orig[i]) ++kept;  // a random draw can hit the original (1/20000)
      else ++random;
    }
  }
  const double total = masked + random + kept;  // 2000 cells x 15
  EXPECT_EQ(total, 30000);
  EXPECT_NEAR(masked / total, 0.8, 0.01);
  EXPECT_NEAR(random / total, 0.1, 0.01);
  EXPECT_NEAR(kept / total, 0.1, 0.01);
}

TEST(Split, FractionAndDeterminism) {
  int64_t val = 0;
  for (int64_t i = 0; i < 100000; ++i) val += is_validation_cell(i, 0.1, 3);
  EXPECT_NEAR(val / 1e5, 0.1, 0.005);
  EXPECT_EQ(is_validation_cell(12345, 0.1, 3), is_validation_cell(12345, 0.1, 3));
  EXPECT_FALSE(is_validation_cell(12345, 0.0, 3));
  int64_t differ = 0;
  for (int64_t i = 0; i < 1000; ++i) differ += is_validation_cell(i, 0.5, 1) != is_validation_cell(i, 0.5, 2);
  EXPECT_GT(differ, 300);  // the split seed matters
}

TEST(HashStream, BelowIsInRangeAndSpread) {
  HashStream s(99);
  std::vector<int> hist(7, 0);
  for (int i = 0; i < 70000; ++i) hist[s.below(7)]++;
  for (int h : hist) EXPECT_NEAR(h, 10000, 400);
}
