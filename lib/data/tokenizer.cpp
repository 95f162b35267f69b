#include "data/tokenizer.h"

#include <algorithm>
#include <bit>
#include <climits>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "util/log.h"

// Vectorised loops are also built for AVX2 and picked at load time where the CPU has it (x86-64
// only; not under sanitizers, whose runtime is not up when the ifunc resolver runs).
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SCTRAIN_NO_CLONES
#endif
#endif
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) && !defined(SCTRAIN_NO_CLONES)
#define SCTRAIN_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define SCTRAIN_AVX2_CLONE
#endif

namespace sctrain::data {

const char* mode_name(TokenMode m) { return m == TokenMode::Rank ? "rank" : "binned"; }

TokenMode parse_mode(const std::string& s) {
  if (s == "rank") return TokenMode::Rank;
  if (s == "binned") return TokenMode::Binned;
  throw std::invalid_argument(str("unknown tokenization mode '", s, "' (rank or binned)"));
}

namespace {

// One pass over a row's values: whether all are finite, whether every positive one is a whole
// number below 2^31, and the sum of those. On the values' bits, with no branch and no
// conditional float operation, so that the compiler vectorises it (AVX2 where the CPU has it):
// for floats >= 0 the bits order as the values do, and max(bits, 0) as int32 is max(v, 0).
struct RowScan {
  bool finite, all_whole;
  int64_t whole;
};
SCTRAIN_AVX2_CLONE RowScan scan_row(const float* values, int64_t n) {
  int32_t not_finite = 0, not_whole = 0;
  int64_t whole = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = std::bit_cast<int32_t>(values[i]);
    not_finite |= static_cast<int32_t>((b & 0x7f800000) == 0x7f800000);  // NaN or infinite
    const int32_t p = std::max(b, 0);                                      // bits of max(v, 0)
    const int32_t big = static_cast<int32_t>(p >= 0x4f000000);             // >= 2^31
    const int32_t w = static_cast<int32_t>(std::bit_cast<float>(p & (big - 1)));  // 0 where big
    not_whole |= big | static_cast<int32_t>(std::bit_cast<int32_t>(static_cast<float>(w)) != p);
    whole += w;
  }
  return {not_finite == 0, not_whole == 0, whole};
}

}  // namespace

int64_t gather_cell_in_place(int32_t* indices, float* values, int64_t n, std::span<const int32_t> column_token,
                             bool may_have_duplicates, double& total, int64_t* negatives) {
  // total is the sum of the positive values in column order, in double (as scipy sums a row).
  // Whole-number values (counts) are summed as integers instead: the same number (every
  // partial sum is then an integer below 2^53, exact in double), without a chain of dependent
  // double additions. A row with any other value is summed in order.
  const RowScan scan = scan_row(values, n);
  const bool finite = scan.finite, all_whole = scan.all_whole;
  const int64_t whole = scan.whole;
  if (!finite)
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(values[i]))
        throw std::invalid_argument(str("value ", values[i], " at column ", indices[i], " (NaN or infinite)"));
  if (all_whole && whole < (int64_t{1} << 53)) {
    total = static_cast<double>(whole);
  } else {
    total = 0;
    for (int64_t i = 0; i < n; ++i)
      if (values[i] > 0) total += values[i];
  }
  // Reads position i, writes position kept <= i: nothing is overwritten before it is read.
  int64_t neg = 0, kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = values[i];
    if (v <= 0) {
      neg += v < 0;
      continue;
    }
    const int32_t t = column_token[indices[i]];
    if (t < 0) continue;
    indices[kept] = t;
    values[kept] = v;
    ++kept;
  }
  if (negatives) *negatives += neg;
  if (!may_have_duplicates || kept < 2) return kept;
  // Sum columns that share a token, in place: slot[token] = its first position (-1 = none).
  thread_local std::vector<int32_t> slot;
  int64_t unique = 0;
  for (int64_t i = 0; i < kept; ++i) {
    const int32_t t = indices[i];
    if (static_cast<size_t>(t) >= slot.size()) slot.resize(t + 1, -1);
    if (slot[t] >= 0) {
      values[slot[t]] += values[i];
    } else {
      slot[t] = static_cast<int32_t>(unique);
      indices[unique] = t;
      values[unique] = values[i];
      ++unique;
    }
  }
  for (int64_t i = 0; i < unique; ++i) slot[indices[i]] = -1;
  return unique;
}

void gather_cell(std::span<const int32_t> indices, std::span<const float> values,
                 std::span<const int32_t> column_token, bool may_have_duplicates, CellGenes& out,
                 int64_t* negatives) {
  out.tokens.assign(indices.begin(), indices.end());
  out.values.assign(values.begin(), values.end());
  const int64_t k = gather_cell_in_place(out.tokens.data(), out.values.data(), static_cast<int64_t>(indices.size()),
                                         column_token, may_have_duplicates, out.total, negatives);
  out.tokens.resize(k);
  out.values.resize(k);
}

void expression_bins(std::span<const float> values, int32_t n_bins, std::vector<uint8_t>& bins) {
  if (n_bins < 2 || n_bins > 256) throw std::invalid_argument(str("n_bins must be in [2, 256], got ", n_bins));
  const int64_t n = static_cast<int64_t>(values.size());
  bins.resize(n);
  if (n == 0) return;
  std::vector<float> sorted(values.begin(), values.end());
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < n; ++i) {
    int64_t less = std::lower_bound(sorted.begin(), sorted.end(), values[i]) - sorted.begin();
    bins[i] = static_cast<uint8_t>(1 + (static_cast<int64_t>(n_bins) - 1) * less / n);
  }
}

SCTRAIN_AVX2_CLONE void normalise(std::span<const float> values, double total, double target_sum, double* out) {
  for (size_t i = 0; i < values.size(); ++i) out[i] = normalised(values[i], total, target_sum);
}

namespace {

// Order keys of a cell's genes: ~bits(normalised value / median), a zero median counting as 1;
// also the smallest and largest key. Built for AVX2 too (SCTRAIN_AVX2_CLONE): the two
// divisions a gene are much of the cost, and vector division rounds exactly as scalar division
// does. Keys of positive scores all have the top bit set, so they order as signed integers too.
SCTRAIN_AVX2_CLONE void score_keys(const float* values, const int32_t* tokens, const double* medians,
                                   double target_sum, double total, int64_t n, uint64_t* key, uint64_t& lo,
                                   uint64_t& hi) {
  int64_t kmin = INT64_MAX, kmax = INT64_MIN;
  for (int64_t i = 0; i < n; ++i) {
    const double m = medians[tokens[i]];  // >= 0
    const double divisor = m + static_cast<double>(m <= 0) * (1.0 - m);  // m, or 1 for 0: no branch
    const uint64_t k = ~std::bit_cast<uint64_t>(normalised(values[i], total, target_sum) / divisor);
    key[i] = k;
    kmin = std::min(kmin, static_cast<int64_t>(k));
    kmax = std::max(kmax, static_cast<int64_t>(k));
  }
  lo = static_cast<uint64_t>(kmin);
  hi = static_cast<uint64_t>(kmax);
}

// Positions 0..n-1 of a cell's genes ordered by (key ascending, token ascending), in the low
// kPos bits of a[0..n) (Item: uint32_t with 16 position bits for n <= 65536, else uint64_t
// with 32). key = ~bits(score): positive finite scores order like their bit patterns, so
// ascending key = descending score. [lo, hi]: the smallest and largest key.
// LSD radix sort of items (prefix << kPos | position), two 8-bit passes: prefix = the top
// 32 key bits less the cell's smallest, shifted right to fit 16 bits (a relative resolution of
// 2^-13 for a cell whose scores span 6 binary orders). Genes sharing a prefix (exact ties and
// near-ties) are then ordered by the full key and the token.
template <typename Item>
void order_genes(const uint64_t* key, const int32_t* token, int64_t n, uint64_t lo_key, uint64_t hi_key,
                 std::vector<Item>& a, std::vector<Item>& tmp) {
  constexpr int kPos = sizeof(Item) == 8 ? 32 : 16;
  constexpr Item kPosMask = (Item{1} << kPos) - 1;
  a.resize(n);
  auto before = [key, token](Item x, Item y) {
    const size_t i = x & kPosMask, j = y & kPosMask;
    return key[i] < key[j] || (key[i] == key[j] && token[i] < token[j]);
  };
  if (n < 64) {
    std::iota(a.begin(), a.end(), Item{0});
    std::sort(a.begin(), a.end(), before);
    return;
  }
  const uint32_t lo = static_cast<uint32_t>(lo_key >> 32), hi = static_cast<uint32_t>(hi_key >> 32);
  const int shift = std::max(0, static_cast<int>(std::bit_width(hi - lo)) - 16);
  // Histograms of both digits. The high digit's counts are split between even and odd genes
  // (added up after): clustered prefixes would otherwise chain each count on the one before.
  uint32_t count[2][256] = {}, odd_high[256] = {};
  int64_t i = 0;
  for (; i + 1 < n; i += 2) {
    const uint32_t p = (static_cast<uint32_t>(key[i] >> 32) - lo) >> shift;
    const uint32_t q = (static_cast<uint32_t>(key[i + 1] >> 32) - lo) >> shift;
    a[i] = static_cast<Item>(static_cast<Item>(p) << kPos | static_cast<Item>(i));
    a[i + 1] = static_cast<Item>(static_cast<Item>(q) << kPos | static_cast<Item>(i + 1));
    ++count[0][p & 255];
    ++count[0][q & 255];
    ++count[1][p >> 8];
    ++odd_high[q >> 8];
  }
  for (; i < n; ++i) {
    const uint32_t p = (static_cast<uint32_t>(key[i] >> 32) - lo) >> shift;
    a[i] = static_cast<Item>(static_cast<Item>(p) << kPos | static_cast<Item>(i));
    ++count[0][p & 255];
    ++count[1][p >> 8];
  }
  for (int b = 0; b < 256; ++b) count[1][b] += odd_high[b];
  tmp.resize(n);
  Item* src = a.data();
  Item* dst = tmp.data();
  uint32_t start[2][256];  // both digits' bucket starts in one loop: two independent chains of sums
  uint32_t sum0 = 0, sum1 = 0;
  for (int b = 0; b < 256; ++b) {
    start[0][b] = sum0, sum0 += count[0][b];
    start[1][b] = sum1, sum1 += count[1][b];
  }
  for (int d = 0; d < 2; ++d) {
    const int bits = kPos + 8 * d;
    if (count[d][(src[0] >> bits) & 255] == static_cast<uint32_t>(n)) continue;  // one bucket: nothing moves
    uint32_t* st = start[d];
    for (int64_t i = 0; i < n; ++i) dst[st[(src[i] >> bits) & 255]++] = src[i];
    std::swap(src, dst);
  }
  if (src != a.data()) std::copy(src, src + n, a.data());
  // Sorted by prefix, which orders like the key: only genes sharing a prefix can be out of
  // order, so one insertion pass finishes the job, unless long runs of equal scores make it
  // quadratic: then a plain sort. Which genes share their prefix with the one before is found
  // first for all (a loop without branches: 10-20% of genes do, too many for the branch
  // predictor), then only those are inserted. Insertion moves genes within a run of one prefix
  // only, so the marks stay true.
  thread_local std::vector<uint8_t> same;
  same.resize(n + 8);
  same[0] = 0;
  for (int64_t k = 1; k < n; ++k) same[k] = (a[k] >> kPos) == (a[k - 1] >> kPos);
  std::memset(same.data() + n, 0, 8);
  int64_t moves = 0;
  for (int64_t w = 0; w < n && moves <= 16 * n; w += 8) {
    uint64_t marks;
    std::memcpy(&marks, same.data() + w, 8);
    while (marks) {
      const int64_t k = w + (std::countr_zero(marks) >> 3);
      marks &= marks - 1;
      const Item x = a[k];
      int64_t m = k;
      for (; m > 0 && before(x, a[m - 1]); --m) a[m] = a[m - 1];
      a[m] = x;
      moves += k - m;
    }
  }
  if (moves > 16 * n) std::sort(a.begin(), a.end(), before);
}

}  // namespace

int64_t tokenize_cell_into(std::span<const int32_t> tokens, std::span<const float> values, double total,
                           std::span<const double> medians, const TokenizeConfig& cfg, int32_t* genes, uint8_t* bins) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t keep = std::min<int64_t>(n, std::max<int32_t>(cfg.max_len - 1, 0));
  thread_local std::vector<uint64_t> key;
  key.resize(n);
  uint64_t lo = 0, hi = 0;
  score_keys(values.data(), tokens.data(), medians.data(), cfg.target_sum, total, n, key.data(), lo, hi);
  auto emit = [&](const auto& order, uint32_t pos_mask) {
    for (int64_t i = 0; i < keep; ++i) genes[i] = tokens[order[i] & pos_mask];
    if (cfg.mode == TokenMode::Binned && bins) {
      thread_local std::vector<uint8_t> all_bins;
      expression_bins(values, cfg.n_bins, all_bins);
      for (int64_t i = 0; i < keep; ++i) bins[i] = all_bins[order[i] & pos_mask];
    }
  };
  if (n <= 65536) {  // positions fit 16 bits: 4-byte items
    thread_local std::vector<uint32_t> order, tmp;
    order_genes(key.data(), tokens.data(), n, lo, hi, order, tmp);
    emit(order, 0xffffu);
  } else {
    thread_local std::vector<uint64_t> order, tmp;
    order_genes(key.data(), tokens.data(), n, lo, hi, order, tmp);
    emit(order, 0xffffffffu);
  }
  return keep;
}

void tokenize_cell(std::span<const int32_t> tokens, std::span<const float> values, double total,
                   std::span<const double> medians, const TokenizeConfig& cfg, TokenizedCell& out) {
  const int64_t keep = std::min<int64_t>(static_cast<int64_t>(tokens.size()), std::max<int32_t>(cfg.max_len - 1, 0));
  out.genes.resize(keep);
  out.bins.resize(cfg.mode == TokenMode::Binned ? keep : 0);
  tokenize_cell_into(tokens, values, total, medians, cfg, out.genes.data(), out.bins.data());
}

}  // namespace sctrain::data
