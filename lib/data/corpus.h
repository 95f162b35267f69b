// A prepared corpus: the cells of one or many h5ad files, their genes mapped onto
// one vocabulary, and the statistics tokenization needs (per-gene medians).
//
//   PreparedCorpus c = prepare_corpus(opts);   // reads the files once
//   save_corpus(c, "run/data");                // vocab.tsv, gene_medians.tsv, manifest.json
//   PreparedCorpus c2 = load_corpus("run/data");
//   PreparedCorpus c3 = open_corpus({"data/pbmc3k_seurat.h5ad"}, opts);  // DIR or files
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "data/vocab.h"
#include "io/h5ad.h"

namespace sctrain::data {

// One input: a file and the matrix to read from it.
// "FILE" uses the default matrix; "FILE:X", "FILE:raw/X", "FILE:layers/NAME" choose one.
struct SourceSpec {
  std::string path;
  std::string matrix = "X";
};
SourceSpec parse_source(const std::string& arg, const std::string& default_matrix = "X");

struct PrepareOptions {
  std::vector<SourceSpec> sources;
  std::string default_matrix = "X";  // for open_corpus's arguments without ":MATRIX"
  TokenizeConfig tokenize;
  std::string gene_table;   // human_genes.tsv; "" = match names exactly, no table
  std::string vocab_file;   // vocab.tsv to use; "" = build the vocabulary from the data
  std::string stats_from;   // a prepared DIR: tokenize with its vocabulary and gene medians (not
                            // computed from these files); genes outside it are dropped and counted
  bool keep_rows = false;   // keep the cells in memory, mapped (PreparedCorpus::gathered): a
                            // Loader in this process then tokenizes without reading the files
  int threads = 2;
  bool progress = true;     // log lines with cells/s
};

// What prepare learned about one input file.
struct SourceInfo {
  std::string path, matrix;
  int64_t n_cells = 0;               // rows of the matrix
  int64_t n_genes = 0;               // columns of the matrix
  int64_t first_cell = 0;            // global id of its first cell (ids run across files)
  std::vector<int32_t> column_token; // matrix column -> token id, -1 = not in vocabulary
  int64_t genes_mapped = 0;          // columns found in the gene table / given vocabulary
  std::vector<std::string> genes_unmapped;  // names not found (kept as own tokens when
                                            // the vocabulary is built from data)
  int64_t genes_dropped = 0;         // columns with no token (loaded vocabulary only)
  int64_t duplicate_columns = 0;     // columns whose token another column already has (summed)
  int64_t cells_empty = 0;           // cells with no expressed gene: skipped
  int64_t negative_values = 0;       // entries < 0: treated as not expressed
  bool has_duplicates() const { return duplicate_columns > 0; }
};

// Cells after gene mapping, by global cell id: tokens(i) (unique) with values(i) (summed
// positive values); totals[i] = the cell's sum of positive values over all columns. Held in the
// chunks of rows prepare read, mapped in place (their column indices became token ids).
struct GatheredCells {
  std::vector<io::CellRows> chunks;
  std::vector<int32_t> chunk;   // per cell: its chunk
  std::vector<int64_t> start;   // per cell: its first entry there
  std::vector<int32_t> length;  // per cell: 0 = an empty cell
  std::vector<double> totals;
  std::span<const int32_t> tokens(int64_t i) const {
    return {chunks[chunk[i]].indices.data() + start[i], static_cast<size_t>(length[i])};
  }
  std::span<const float> values(int64_t i) const {
    return {chunks[chunk[i]].values.data() + start[i], static_cast<size_t>(length[i])};
  }
};

// Per-cell token counts (CLS + genes, after truncation), for the summary.
struct TokenStats {
  int64_t n_cells = 0;   // cells kept (not empty)
  double tokens_mean = 0;
  int64_t tokens_max = 0;
  int64_t tokens_total = 0;
};

struct PreparedCorpus {
  Vocabulary vocab;
  std::vector<double> gene_medians;  // [vocab.size()] non-zero median of normalised values;
                                     // 0 where a gene was never expressed (and specials)
  TokenizeConfig tokenize;
  std::vector<SourceInfo> sources;
  int64_t n_cells = 0;               // all rows of all sources (global ids 0..n_cells-1)
  TokenStats stats;
  std::string gene_table, vocab_file;  // what prepare was given (provenance, in manifest.json)
  std::string stats_from;              // the prepared DIR whose vocabulary and medians were reused
  // With stats_from: genes of its vocabulary expressed here that have no median there (never
  // expressed in that corpus); ranked with median 1, as tokenize_cell does.
  int64_t genes_without_median = 0;
  // The mapped cells, when PrepareOptions::keep_rows (else null).
  std::shared_ptr<const GatheredCells> gathered;
  // Or raw matrices, one per source (hand-made corpora in tests); else the files are read.
  std::shared_ptr<const std::vector<io::CellRows>> rows;

  // Which source and row a global cell id is.
  std::pair<int, int64_t> locate(int64_t cell_id) const;
  const std::vector<int32_t>& column_token(int source) const { return sources[source].column_token; }
};

PreparedCorpus prepare_corpus(const PrepareOptions& opts);
void save_corpus(const PreparedCorpus& corpus, const std::string& dir);
PreparedCorpus load_corpus(const std::string& dir);
// A prepared DIR (holds manifest.json) is loaded; otherwise the arguments are sources
// ("FILE[:matrix]") prepared in memory with keep_rows. What a trainer's --data calls.
PreparedCorpus open_corpus(const std::vector<std::string>& data, PrepareOptions opts);

// Tokens of the given cells (global ids), read from corpus.rows or the files. An empty
// cell gives an empty TokenizedCell. For inspection and cross-checks, not for training.
std::vector<TokenizedCell> tokenize_cells(const PreparedCorpus& corpus, const std::vector<int64_t>& cell_ids);

// The summary `sctrain prepare --json` prints (and manifest.json holds under "summary").
std::string summary_json(const PreparedCorpus& corpus);

}  // namespace sctrain::data
