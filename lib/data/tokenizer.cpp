#include "data/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "util/log.h"

namespace sctrain::data {

const char* mode_name(TokenMode m) { return m == TokenMode::Rank ? "rank" : "binned"; }

TokenMode parse_mode(const std::string& s) {
  if (s == "rank") return TokenMode::Rank;
  if (s == "binned") return TokenMode::Binned;
  throw std::invalid_argument(str("unknown tokenization mode '", s, "' (rank or binned)"));
}

void gather_cell(std::span<const int32_t> indices, std::span<const float> values,
                 std::span<const int32_t> column_token, bool may_have_duplicates, CellGenes& out,
                 int64_t* negatives) {
  out.tokens.clear();
  out.values.clear();
  double total = 0;
  int64_t neg = 0;
  for (size_t i = 0; i < indices.size(); ++i) {
    float v = values[i];
    if (!std::isfinite(v))
      throw std::invalid_argument(str("value ", v, " at column ", indices[i], " (NaN or infinite)"));
    if (v <= 0) {
      neg += v < 0;
      continue;
    }
    total += v;
    int32_t t = column_token[indices[i]];
    if (t < 0) continue;
    out.tokens.push_back(t);
    out.values.push_back(v);
  }
  out.total = total;
  if (negatives) *negatives += neg;
  if (!may_have_duplicates || out.tokens.size() < 2) return;
  // Sum columns that share a token, in place: slot[token] = its first position (-1 = none).
  thread_local std::vector<int32_t> slot;
  size_t kept = 0;
  for (size_t i = 0; i < out.tokens.size(); ++i) {
    const int32_t t = out.tokens[i];
    if (static_cast<size_t>(t) >= slot.size()) slot.resize(t + 1, -1);
    if (slot[t] >= 0) {
      out.values[slot[t]] += out.values[i];
    } else {
      slot[t] = static_cast<int32_t>(kept);
      out.tokens[kept] = t;
      out.values[kept] = out.values[i];
      ++kept;
    }
  }
  out.tokens.resize(kept);
  out.values.resize(kept);
  for (int32_t t : out.tokens) slot[t] = -1;
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

namespace {

// A gene of a cell with its order key: ascending key = descending score. Scores are positive
// finite doubles, whose bit patterns order like the values, so key = ~bits(score).
struct Keyed {
  uint64_t key;
  int32_t token;
  int32_t index;
};

// LSD radix sort by key, 8 bits a pass (passes where all keys share the byte are skipped),
// then runs of equal keys put in token order. Same result as sorting by (key, token).
void sort_keyed(std::vector<Keyed>& a, std::vector<Keyed>& tmp) {
  const size_t n = a.size();
  if (n < 64) {
    std::sort(a.begin(), a.end(), [](const Keyed& x, const Keyed& y) {
      return x.key < y.key || (x.key == y.key && x.token < y.token);
    });
    return;
  }
  uint32_t count[8][256] = {};
  for (const Keyed& k : a)
    for (int d = 0; d < 8; ++d) ++count[d][(k.key >> (8 * d)) & 255];
  tmp.resize(n);
  Keyed* src = a.data();
  Keyed* dst = tmp.data();
  for (int d = 0; d < 8; ++d) {
    const uint32_t* c = count[d];
    if (c[(src[0].key >> (8 * d)) & 255] == n) continue;  // one bucket: nothing moves
    uint32_t start[256];
    uint32_t sum = 0;
    for (int b = 0; b < 256; ++b) start[b] = sum, sum += c[b];
    for (size_t i = 0; i < n; ++i) dst[start[(src[i].key >> (8 * d)) & 255]++] = src[i];
    std::swap(src, dst);
  }
  if (src != a.data()) std::copy(src, src + n, a.data());
  for (size_t i = 0; i < n;) {  // equal scores: smaller token first
    size_t j = i + 1;
    while (j < n && a[j].key == a[i].key) ++j;
    if (j - i > 1) std::sort(a.begin() + i, a.begin() + j, [](const Keyed& x, const Keyed& y) { return x.token < y.token; });
    i = j;
  }
}

}  // namespace

void tokenize_cell(const CellGenes& cell, std::span<const double> medians, const TokenizeConfig& cfg,
                   TokenizedCell& out) {
  const int64_t n = static_cast<int64_t>(cell.tokens.size());
  const int64_t keep = std::min<int64_t>(n, std::max<int32_t>(cfg.max_len - 1, 0));
  thread_local std::vector<Keyed> keyed, tmp;
  keyed.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = cell.tokens[i];
    const double m = medians[t] > 0 ? medians[t] : 1.0;
    const double score = normalised(cell.values[i], cell.total, cfg.target_sum) / m;
    uint64_t bits;
    std::memcpy(&bits, &score, sizeof bits);
    keyed[i] = {~bits, t, static_cast<int32_t>(i)};
  }
  sort_keyed(keyed, tmp);
  out.genes.resize(keep);
  for (int64_t i = 0; i < keep; ++i) out.genes[i] = keyed[i].token;
  out.bins.clear();
  if (cfg.mode == TokenMode::Binned) {
    thread_local std::vector<uint8_t> all_bins;
    expression_bins(cell.values, cfg.n_bins, all_bins);
    out.bins.resize(keep);
    for (int64_t i = 0; i < keep; ++i) out.bins[i] = all_bins[keyed[i].index];
  }
}

}  // namespace sctrain::data
