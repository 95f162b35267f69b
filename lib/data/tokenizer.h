// Cell -> tokens.
//
// rank (Geneformer-style): normalise the cell to total target_sum (total = sum of its
// positive values over all columns), divide each gene by its corpus median, order
// expressed genes by that score descending (ties: smaller token id first), keep the
// first max_len-1 after CLS.
// binned (scGPT-style): the same gene order; each gene also gets an expression bin
// 1..n_bins-1 from its quantile among the cell's expressed values (see expression_bins);
// bin 0 = not expressed (also CLS and padding).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace sctrain::data {

enum class TokenMode { Rank, Binned };
const char* mode_name(TokenMode m);          // "rank", "binned"
TokenMode parse_mode(const std::string& s);  // throws std::invalid_argument

struct TokenizeConfig {
  TokenMode mode = TokenMode::Rank;
  int32_t max_len = 2048;    // tokens per cell, CLS included
  int32_t n_bins = 51;       // binned mode: bins incl. bin 0
  double target_sum = 1e4;   // normalisation total
};

// One cell's expressed genes after mapping: token ids (unique) and summed raw values > 0.
struct CellGenes {
  std::vector<int32_t> tokens;
  std::vector<float> values;
  double total = 0;  // sum of the cell's positive values over all columns (mapped or not)
};

// Gathers a CSR row into CellGenes: columns mapped through column_token (-1 dropped),
// values <= 0 dropped (negatives counted into *negatives), duplicate tokens summed (in
// column order; a token stays at its first column's place).
// Throws std::invalid_argument on a NaN or infinite value.
void gather_cell(std::span<const int32_t> indices, std::span<const float> values,
                 std::span<const int32_t> column_token, bool may_have_duplicates, CellGenes& out,
                 int64_t* negatives = nullptr);
// The same in place: the row's first k column indices become its tokens and its first k values
// their sums; returns k. total = the row's sum of positive values (all columns).
int64_t gather_cell_in_place(int32_t* indices, float* values, int64_t n, std::span<const int32_t> column_token,
                             bool may_have_duplicates, double& total, int64_t* negatives = nullptr);

// A tokenized cell: genes in model order (CLS not included), bins parallel (binned mode).
struct TokenizedCell {
  std::vector<int32_t> genes;
  std::vector<uint8_t> bins;
};

// Orders and truncates a cell's genes (max_len-1 kept). medians[token] > 0 for every
// expressed token (a zero median is treated as 1).
void tokenize_cell(std::span<const int32_t> tokens, std::span<const float> values, double total,
                   std::span<const double> medians, const TokenizeConfig& cfg, TokenizedCell& out);
// The same written to genes[0..k) (and bins[0..k) in binned mode); returns k (max_len-1 at most).
int64_t tokenize_cell_into(std::span<const int32_t> tokens, std::span<const float> values, double total,
                           std::span<const double> medians, const TokenizeConfig& cfg, int32_t* genes, uint8_t* bins);
inline void tokenize_cell(const CellGenes& cell, std::span<const double> medians, const TokenizeConfig& cfg,
                          TokenizedCell& out) {
  tokenize_cell(cell.tokens, cell.values, cell.total, medians, cfg, out);
}

// Bins of values (all > 0): bin = 1 + floor((n_bins-1) * #{values < v} / n). Equal values
// share a bin; the smallest value gets bin 1; n_bins <= 256.
void expression_bins(std::span<const float> values, int32_t n_bins, std::vector<uint8_t>& bins);

// Normalised value of a gene: value * target_sum / total (the quantity medians are over).
inline double normalised(float value, double total, double target_sum) {
  return static_cast<double>(value) * target_sum / total;
}
// normalised() of every value into out (vectorised; AVX2 where the CPU has it).
void normalise(std::span<const float> values, double total, double target_sum, double* out);

}  // namespace sctrain::data
