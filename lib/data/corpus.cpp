#include "data/corpus.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>
#include <atomic>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "data/gene_table.h"
#include "data/pages.h"
#include "data/parallel.h"
#include "data/source_reader.h"
#include "io/serial_inflate.h"
#include "util/json.h"
#include "util/log.h"

namespace sctrain::data {

namespace fs = std::filesystem;

SourceSpec parse_source(const std::string& arg, const std::string& default_matrix) {
  // FILE:MATRIX where MATRIX is X, raw/X or layers/NAME; otherwise the whole arg is a path.
  auto colon = arg.rfind(':');
  if (colon != std::string::npos && colon > 0) {
    std::string m = arg.substr(colon + 1);
    if (m == "X" || m == "raw/X" || m.rfind("layers/", 0) == 0) return {arg.substr(0, colon), m};
  }
  return {arg, default_matrix};
}

std::pair<int, int64_t> PreparedCorpus::locate(int64_t cell_id) const {
  for (int s = 0; s < static_cast<int>(sources.size()); ++s)
    if (cell_id >= sources[s].first_cell && cell_id < sources[s].first_cell + sources[s].n_cells)
      return {s, cell_id - sources[s].first_cell};
  throw std::out_of_range(str("cell id ", cell_id, " outside the corpus (", n_cells, " cells)"));
}

namespace {

constexpr int64_t kChunkRows = 256;

// Fresh memory is dear (a first touch costs ~0.4-0.5 ms per MB on our VM, more than
// inflating it): blocks up to 32 MB (glibc's most) come from the heap and freed memory stays
// mapped, so a later buffer (the loader's tokens after the medians' grouped values, batches
// after batches) reuses pages already touched instead of faulting in new ones.
// Process-wide, once, and only raising glibc's thresholds.
void keep_freed_pages() {
#if defined(__GLIBC__)
  static const bool once = [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    return true;
  }();
  (void)once;
#endif
}

// While the files open (serial HDF5 work on the caller's thread, the other cores idle), a
// thread touches fresh heap pages (a block on 2 MB pages) until told to stop, then frees them and
// exits. Its malloc arena, pages mapped, then goes to the next thread that starts (glibc hands a
// finished thread's arena on): the gather worker, whose chunks of cells reuse those pages instead
// of faulting new ones in (~0.4-0.5 ms a MB here), and fault the rest of the block in 2 MB pages.
class Prefault {
 public:
  Prefault() {
#if defined(__GLIBC__)
    thread_ = std::thread([this] {
      constexpr size_t kBlock = size_t{30} << 20;  // under glibc's 32 MB: from this thread's heap
      char* p = static_cast<char*>(std::malloc(kBlock));
      if (!p) return;
      advise_huge_pages(p, kBlock);
      size_t i = 0;
      for (; i < kBlock && !stop_.load(std::memory_order_relaxed); i += 4096) p[i] = 0;
      std::free(p);
      mb_ = static_cast<int>(i >> 20);
    });
#endif
  }
  ~Prefault() { stop(); }
  int stop() {  // joins; returns the MB touched
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return mb_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
  int mb_ = 0;
};

// var columns holding gene symbols, tried when a name (e.g. an outdated Ensembl ID) is not in
// the gene table.
constexpr const char* kSymbolColumns[] = {"gene_symbol", "gene_symbols", "symbol", "gene_name", "gene_names",
                                          "feature_name"};

// The mean of the values at ranks k_lo and k_hi (0-based, k_hi - k_lo <= 1) of a[0..m)
// (positive doubles, which order like their bit patterns), which it reorders. A radix select:
// a 256-bucket histogram of the bits between the smallest and largest finds the buckets that
// hold the ranks, and only their values are selected from.
double middle_ranks(double* a, int64_t m, int64_t k_lo, int64_t k_hi, std::vector<double>& buf) {
  auto select = [](double* v, int64_t n, int64_t lo, int64_t hi) {
    std::nth_element(v, v + hi, v + n);
    if (lo == hi) return v[hi];
    return (*std::max_element(v, v + hi) + v[hi]) / 2;
  };
  if (m < 128) return select(a, m, k_lo, k_hi);
  uint64_t lo = UINT64_MAX, hi = 0;
  for (int64_t i = 0; i < m; ++i) {
    const uint64_t b = std::bit_cast<uint64_t>(a[i]);
    lo = std::min(lo, b);
    hi = std::max(hi, b);
  }
  if (lo == hi) return a[0];
  const int shift = std::max(0, static_cast<int>(std::bit_width(hi - lo)) - 8);
  uint32_t count[256] = {};
  for (int64_t i = 0; i < m; ++i) ++count[(std::bit_cast<uint64_t>(a[i]) - lo) >> shift];
  int64_t below = 0;
  int b_lo = 0;
  while (below + count[b_lo] <= k_lo) below += count[b_lo++];
  int b_hi = b_lo;
  for (int64_t upto = below + count[b_lo]; upto <= k_hi; upto += count[++b_hi]) {}
  buf.resize(m);
  int64_t n = 0;
  for (int64_t i = 0; i < m; ++i) {
    const uint64_t b = (std::bit_cast<uint64_t>(a[i]) - lo) >> shift;
    buf[n] = a[i];
    n += (b >= static_cast<uint64_t>(b_lo)) & (b <= static_cast<uint64_t>(b_hi));
  }
  return select(buf.data(), n, k_lo - below, k_hi - below);
}

// The smallest and largest of n positive finite floats (n > 0): on their bits, which order as
// the values do, so that the loop vectorises.
std::pair<float, float> value_range(const float* v, int64_t n) {
  int32_t lo = INT32_MAX, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = std::bit_cast<int32_t>(v[i]);
    lo = std::min(lo, b);
    hi = std::max(hi, b);
  }
  return {std::bit_cast<float>(lo), std::bit_cast<float>(hi)};
}

// Each gene's median (numpy's: the mean of the two middle values for an even count) of its
// normalised values, 0 for a gene never expressed, without grouping every value by gene:
//  A. each thread counts its cells' values per gene in kBuckets buckets of their bits (all values
//     lie in [lo, hi], which the bits split evenly: about 4 buckets per binary order for counts),
//  B. the bucket(s) holding a gene's middle ranks are found from the counts, and only the values
//     in them are collected (~15% of all), then selected from (middle_ranks).
// Two reads of the cells in cell order instead of a scatter of every value to its gene (29 MB
// of fresh pages for kang) and a selection over all of them.
std::vector<double> gene_medians(const GatheredCells& g, int64_t n, int32_t V, double target_sum, double lo, double hi,
                                 int T) {
  constexpr int kBits = 6, kBuckets = 1 << kBits;
  std::vector<double> medians(V, 0.0);
  if (!(lo <= hi)) return medians;  // no value at all
  const uint64_t base = std::bit_cast<uint64_t>(lo);
  const int shift = std::max(0, static_cast<int>(std::bit_width(std::bit_cast<uint64_t>(hi) - base)) - kBits);
  auto bucket = [base, shift](double x) {  // monotone in x; < kBuckets for x in [lo, hi]
    return static_cast<uint32_t>(std::min<uint64_t>((std::bit_cast<uint64_t>(x) - base) >> shift, kBuckets - 1));
  };
  // A. Counts per thread, gene and bucket.
  std::vector<std::vector<uint32_t>> count(T);
  run_parallel(T, [&](int p) {
    std::vector<uint32_t>& c = count[p];
    c.assign(static_cast<size_t>(V) * kBuckets, 0);
    std::vector<double> norm;
    for (int64_t i = n * p / T; i < n * (p + 1) / T; ++i) {
      const std::span<const int32_t> tokens = g.tokens(i);
      norm.resize(tokens.size());
      normalise(g.values(i), g.totals[i], target_sum, norm.data());
      for (size_t k = 0; k < tokens.size(); ++k) ++c[static_cast<size_t>(tokens[k]) * kBuckets + bucket(norm[k])];
    }
  });
  // Per gene: the buckets [first, first + width] that hold its middle ranks, the values below
  // them, and where each thread's collected values go: gene t's, thread p's, at to[p][t], each
  // thread's run followed by one spare slot (B writes every value and advances only past those
  // it keeps; the spare takes the last write).
  struct Range {
    uint32_t first = 0, width = 0;
  };
  std::vector<Range> range(V);
  std::vector<int64_t> below(V, 0), start(V + 1, 0), total(V, 0);
  std::vector<std::vector<int64_t>> to(T, std::vector<int64_t>(V));
  int64_t pos = 0;
  for (int32_t t = 0; t < V; ++t) {
    uint32_t sum[kBuckets];
    int64_t m = 0;
    for (int b = 0; b < kBuckets; ++b) {
      uint32_t s = 0;
      for (int p = 0; p < T; ++p) s += count[p][static_cast<size_t>(t) * kBuckets + b];
      sum[b] = s;
      m += s;
    }
    start[t] = pos;
    total[t] = m;
    if (m == 0) {
      for (int p = 0; p < T; ++p) to[p][t] = pos;  // no value of t: nothing written
      continue;
    }
    const int64_t k_lo = (m - 1) / 2, k_hi = m / 2;
    int64_t under = 0;
    uint32_t b = 0;
    while (under + sum[b] <= k_lo) under += sum[b++];
    uint32_t e = b;
    for (int64_t upto = under + sum[b]; upto <= k_hi; upto += sum[++e]) {}
    range[t] = {b, e - b};
    below[t] = under;
    for (int p = 0; p < T; ++p) {
      to[p][t] = pos;
      for (uint32_t x = b; x <= e; ++x) pos += count[p][static_cast<size_t>(t) * kBuckets + x];
      ++pos;  // the spare
    }
  }
  start[V] = pos;
  count = {};
  // B. Collect the values in each gene's middle buckets.
  std::unique_ptr<double[]> kept(new double[pos + 1]);
  run_parallel(T, [&](int p) {
    int64_t* at = to[p].data();
    std::vector<double> norm;
    for (int64_t i = n * p / T; i < n * (p + 1) / T; ++i) {
      const std::span<const int32_t> tokens = g.tokens(i);
      norm.resize(tokens.size());
      normalise(g.values(i), g.totals[i], target_sum, norm.data());
      for (size_t k = 0; k < tokens.size(); ++k) {
        const int32_t t = tokens[k];
        const Range r = range[t];
        kept[at[t]] = norm[k];
        at[t] += bucket(norm[k]) - r.first <= r.width;  // unsigned: first <= bucket <= first + width
      }
    }
  });
  // Each gene's runs made contiguous (the spares squeezed out), then its middle ranks selected.
  // Genes split between threads by equal shares of kept values.
  run_parallel(T, [&](int p) {
    const int64_t lo_pos = pos * p / T, hi_pos = pos * (p + 1) / T;
    std::vector<double> buf;
    for (int32_t t = kNumSpecial; t < V; ++t) {
      if (total[t] == 0 || start[t] < lo_pos || start[t] >= hi_pos) continue;
      // Thread 0's run is [start, to[0]); thread q's begins one past thread q-1's end (its spare).
      double* v = kept.get();
      int64_t end = to[0][t], run = to[0][t] + 1;
      for (int q = 1; q < T; ++q) {
        std::copy(v + run, v + to[q][t], v + end);  // moves left: overlap is fine
        end += to[q][t] - run;
        run = to[q][t] + 1;
      }
      const int64_t m = total[t], k_lo = (m - 1) / 2 - below[t], k_hi = m / 2 - below[t];
      medians[t] = middle_ranks(v + start[t], end - start[t], k_lo, k_hi, buf);
    }
  });
  return medians;
}

struct Progress {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now(), last = start;
  bool on;
  explicit Progress(bool enabled) : on(enabled) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); }
  void tick(const std::string& what, int64_t done, int64_t total) {
    if (!on) return;
    auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last).count() < 2.0 && done < total) return;
    last = now;
    double s = seconds();
    log::info(str(what, ": ", done, "/", total, " cells, ", static_cast<int64_t>(done / std::max(s, 1e-9)), " cells/s"));
  }
};

// Step 3 of prepare: workers take chunks of rows in turn (each inflating its own chunks),
// gather every cell (columns mapped to tokens, duplicates summed) and append the chunk to the
// gathered arrays. They start before the gene mapping is known and read ahead until it is:
// start(), set the sources' column_token, then run() (which also works on the caller's thread).
class Gatherer {
 public:
  static constexpr size_t kReadAhead = 32;  // chunks a worker reads while the mapping is not ready

  Gatherer(const std::vector<OpenedMatrix>& opened, const std::vector<SourceInfo>& sources, int64_t n_cells,
           int32_t max_len, double target_sum, bool progress)
      : per_source(sources.size()),
        opened_(opened),
        sources_(sources),
        max_len_(max_len),
        target_sum_(target_sum),
        progress_(progress) {
    for (size_t s = 0; s < sources.size(); ++s)
      for (int64_t b = 0; b < sources[s].n_cells; b += kChunkRows)
        items_.push_back({static_cast<int>(s), b, std::min(sources[s].n_cells, b + kChunkRows)});
    cells = std::make_shared<GatheredCells>();
    cells->chunks.resize(items_.size());
    cells->chunk.assign(n_cells, 0);
    cells->start.assign(n_cells, 0);
    cells->length.assign(n_cells, 0);
    cells->totals.assign(n_cells, 0.0);
    n_cells_ = n_cells;
  }
  ~Gatherer() { stop(); }

  void start(int n_background) {
    for (int i = 0; i < n_background; ++i) workers_.emplace_back([this] { work(); });
  }
  // The mapping is ready: gather on this thread too until all chunks are done.
  void run() {
    {
      std::lock_guard lk(mu_);
      ready_ = true;
    }
    cv_.notify_all();
    work();
    join();
    if (error_) std::rethrow_exception(error_);
  }
  void stop() {
    {
      std::lock_guard lk(mu_);
      failed_ = true;
    }
    cv_.notify_all();
    join();
  }

  struct SourceCounts {
    int64_t cells_empty = 0, negative_values = 0;
  };
  std::shared_ptr<GatheredCells> cells;
  std::vector<SourceCounts> per_source;
  TokenStats stats;
  // The smallest and largest normalised value of any gathered gene (for the medians' buckets).
  double lo_normalised = std::numeric_limits<double>::infinity(), hi_normalised = 0;
  double seconds() const { return progress_.seconds(); }

 private:
  struct Item {
    int source;
    int64_t begin, end;
  };
  void join() {
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void work() {
    io::SerialInflate serial;  // the workers are the parallelism
    std::vector<std::pair<size_t, io::CellRows>> ahead;  // read before the mapping was ready
    try {
      for (;;) {
        std::unique_lock lk(mu_);
        if (failed_) return;
        if (ready_ && !ahead.empty()) {
          lk.unlock();
          for (auto& [k, rows] : ahead) gather(k, std::move(rows));
          ahead.clear();
          continue;
        }
        if (!ready_ && (ahead.size() >= kReadAhead || (next_ == items_.size() && !ahead.empty()))) {
          cv_.wait(lk, [&] { return ready_ || failed_; });
          continue;
        }
        if (next_ == items_.size()) return;
        const size_t k = next_++;
        const bool mapped = ready_;
        lk.unlock();
        const Item& it = items_[k];
        io::CellRows rows = opened_[it.source].matrix.read_rows(it.begin, it.end);
        if (mapped) gather(k, std::move(rows));
        else ahead.emplace_back(k, std::move(rows));
      }
    } catch (...) {
      {
        std::lock_guard lk(mu_);
        if (!error_) error_ = std::current_exception();
        failed_ = true;
      }
      cv_.notify_all();
    }
  }

  // Maps chunk k's cells in place and keeps the chunk as their storage.
  void gather(size_t k, io::CellRows rows) {
    const Item& it = items_[k];
    const SourceInfo& si = sources_[it.source];
    const bool dups = si.has_duplicates();
    GatheredCells& g = *cells;
    const int64_t first = si.first_cell + it.begin;
    int64_t negatives = 0, empty = 0;
    TokenStats st;
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    for (int64_t r = 0; r < rows.n_rows(); ++r) {
      const int64_t a = rows.indptr[r];
      int64_t genes;
      try {
        genes = gather_cell_in_place(rows.indices.data() + a, rows.values.data() + a, rows.row_nnz(r), si.column_token,
                                     dups, g.totals[first + r], &negatives);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(str(si.path, ": ", si.matrix, " cell ", it.begin + r, ": ", e.what()));
      }
      g.chunk[first + r] = static_cast<int32_t>(k);
      g.start[first + r] = a;
      g.length[first + r] = static_cast<int32_t>(genes);
      if (genes == 0) {
        ++empty;
        continue;
      }
      const auto [v_lo, v_hi] = value_range(rows.values.data() + a, genes);
      lo = std::min(lo, normalised(v_lo, g.totals[first + r], target_sum_));
      hi = std::max(hi, normalised(v_hi, g.totals[first + r], target_sum_));
      const int64_t len = 1 + std::min<int64_t>(genes, max_len_ - 1);
      st.n_cells++;
      st.tokens_total += len;
      st.tokens_max = std::max(st.tokens_max, len);
    }
    const int64_t n_rows = rows.n_rows();
    g.chunks[k] = std::move(rows);  // each worker its own slots: no lock
    std::lock_guard lk(commit_mu_);
    per_source[it.source].cells_empty += empty;
    per_source[it.source].negative_values += negatives;
    stats.n_cells += st.n_cells;
    stats.tokens_total += st.tokens_total;
    stats.tokens_max = std::max(stats.tokens_max, st.tokens_max);
    lo_normalised = std::min(lo_normalised, lo);
    hi_normalised = std::max(hi_normalised, hi);
    done_ += n_rows;
    progress_.tick("prepare", done_, n_cells_);
  }

  const std::vector<OpenedMatrix>& opened_;
  const std::vector<SourceInfo>& sources_;
  const int32_t max_len_;
  const double target_sum_;
  std::vector<Item> items_;
  int64_t n_cells_ = 0, done_ = 0;
  Progress progress_;
  std::vector<std::thread> workers_;
  std::mutex mu_, commit_mu_;
  std::condition_variable cv_;
  size_t next_ = 0;
  bool ready_ = false, failed_ = false;
  std::exception_ptr error_;
};

}  // namespace

PreparedCorpus prepare_corpus(const PrepareOptions& opts) {
  if (opts.sources.empty()) throw std::invalid_argument("prepare: no input files");
  if (opts.tokenize.max_len < 2) throw std::invalid_argument(str("max_len must be >= 2, got ", opts.tokenize.max_len));
  if (opts.tokenize.n_bins < 2 || opts.tokenize.n_bins > 256)
    throw std::invalid_argument(str("n_bins must be in [2, 256], got ", opts.tokenize.n_bins));
  keep_freed_pages();
  PreparedCorpus c;
  c.tokenize = opts.tokenize;
  c.gene_table = opts.gene_table;
  c.vocab_file = opts.vocab_file;
  c.stats_from = opts.stats_from;
  Progress phase(false);  // phase timings for the debug log

  const bool reuse_stats = !opts.stats_from.empty();
  if (reuse_stats && !opts.vocab_file.empty())
    throw std::invalid_argument("prepare: give a vocabulary (--vocab) or a corpus to take statistics from (--stats-from), not both");
  const bool fixed_vocab = reuse_stats || !opts.vocab_file.empty();
  const std::string vocab_origin = reuse_stats ? opts.stats_from : opts.vocab_file;  // for messages
  if (reuse_stats) {
    PreparedCorpus from = load_corpus(opts.stats_from);
    c.vocab = std::move(from.vocab);
    c.gene_medians = std::move(from.gene_medians);
    log::info(str("statistics from ", opts.stats_from, ": ", c.vocab.n_genes(), " genes with their medians"));
  } else if (fixed_vocab) {
    c.vocab = Vocabulary::load(opts.vocab_file);
  }
  const bool use_table = !opts.gene_table.empty();

  const int T = std::max(1, std::min(opts.threads, 16));
  std::optional<Prefault> prefault;
  if (T > 1) prefault.emplace();
  advise_huge_heap(size_t{30} << 20);  // this thread's reads of cells: on 2 MB pages (pages.h)
  // 1. Open every source's matrix; the cells are read from then on (step 3) while the genes
  //    are named (var) and mapped.
  std::vector<OpenedMatrix> opened;
  int64_t next_cell = 0;
  for (const SourceSpec& spec : opts.sources) {
    opened.push_back(open_matrix(spec.path, spec.matrix));
    const io::MatrixInfo& info = opened.back().matrix.info();
    SourceInfo si;
    si.path = spec.path;
    si.matrix = spec.matrix;
    si.n_cells = info.n_rows;
    si.n_genes = info.n_cols;
    si.first_cell = next_cell;
    next_cell += info.n_rows;
    c.sources.push_back(std::move(si));
  }
  c.n_cells = next_cell;
  if (prefault) log::debug(str("prepare: ", prefault->stop(), " MB of pages touched while the files opened"));
  Gatherer gatherer(opened, c.sources, c.n_cells, c.tokenize.max_len, c.tokenize.target_sum, opts.progress);
  gatherer.start(T - 1);

  // Gene names, and a symbol column of var to fall back on.
  std::vector<std::vector<std::string>> names(opts.sources.size()), symbols(opts.sources.size());
  std::vector<std::string> symbol_column(opts.sources.size());
  std::vector<std::string> all_names;
  // Where each source's names start in all_names, and each column's symbol there (-1: none, empty
  // or the name itself): the table answers by these positions (GeneTable::canonical_in_use).
  std::vector<size_t> names_at(opts.sources.size());
  std::vector<std::vector<int64_t>> symbol_at(opts.sources.size());
  for (size_t s = 0; s < opts.sources.size(); ++s) {
    const SourceSpec& spec = opts.sources[s];
    const int64_t n_cols = c.sources[s].n_genes;
    io::Dataframe var = opened[s].file.var_of(spec.matrix);  // read once: names and symbols
    names[s] = std::move(var.index);
    if (static_cast<int64_t>(names[s].size()) != n_cols)
      throw std::runtime_error(str(spec.path, ": ", spec.matrix, " has ", n_cols, " columns but ", names[s].size(), " gene names"));
    names_at[s] = all_names.size();
    all_names.insert(all_names.end(), names[s].begin(), names[s].end());
    if (use_table) {
      for (const char* col : kSymbolColumns) {
        const io::Column* column = var.find(col);
        if (!column || column->type == io::ColumnType::Numeric || column->type == io::ColumnType::Boolean) continue;
        if (static_cast<int64_t>(column->size()) != n_cols) continue;
        symbol_column[s] = col;
        for (size_t j = 0; j < column->size(); ++j) symbols[s].push_back(column->text(j));
        // A symbol that is the column's name adds nothing to look up (pbmc3k: all of them; the
        // table's names in use were twice as many, its index twice the size)
        symbol_at[s].assign(symbols[s].size(), -1);
        for (size_t j = 0; j < symbols[s].size(); ++j)
          if (!symbols[s][j].empty() && symbols[s][j] != names[s][j]) {
            symbol_at[s][j] = static_cast<int64_t>(all_names.size());
            all_names.push_back(symbols[s][j]);
          }
        break;
      }
    }
  }
  log::debug(str("prepare: opened ", opts.sources.size(), " files at ", phase.seconds(), " s"));
  std::optional<GeneTable> table;
  if (use_table) {
    table = GeneTable::load(opts.gene_table, &all_names);
    log::info(str("gene table ", opts.gene_table, ": ", table->size(), " genes"));
  }

  // Names -> canonical token names: the table (by name, then by var's symbol column), else
  // the name itself.
  std::vector<std::vector<std::string>> canon(opts.sources.size());
  for (size_t s = 0; s < opts.sources.size(); ++s) {
    SourceInfo& si = c.sources[s];
    int64_t via_symbol = 0;
    for (size_t j = 0; j < names[s].size(); ++j) {
      const std::string& name = names[s][j];
      std::optional<std::string_view> cn = table ? table->canonical_in_use(names_at[s] + j) : std::nullopt;
      if (!cn && table && !symbol_at[s].empty() && symbol_at[s][j] >= 0) {
        cn = table->canonical_in_use(static_cast<size_t>(symbol_at[s][j]));
        via_symbol += cn.has_value();
      }
      bool known = cn.has_value();
      std::string token = known ? std::string(*cn) : strip_ensembl_version(name);
      if (fixed_vocab) {
        if (c.vocab.find(token) < 0 && c.vocab.find(name) >= 0) token = name;
        known = c.vocab.find(token) >= 0;
      }
      if (!table && !fixed_vocab) known = true;  // names taken as they are
      if (known) ++si.genes_mapped;
      else si.genes_unmapped.push_back(name);
      canon[s].push_back(token);
    }
    if (via_symbol)
      log::info(str(si.path, ": ", via_symbol, " genes not in the table by name matched by var/", symbol_column[s]));
  }

  log::debug(str("prepare: genes mapped at ", phase.seconds(), " s"));
  // 2. The vocabulary: sorted canonical names of all sources (unless given).
  if (!fixed_vocab) {
    std::vector<std::string_view> all;  // sorted and unique: a vector, not a std::set (13.7k names: 5 -> 1 ms)
    for (const auto& names : canon) all.insert(all.end(), names.begin(), names.end());
    sort_unique_names(all);
    std::vector<std::string> genes;
    genes.reserve(all.size());
    for (std::string_view n : all) {
      bool special = false;
      for (int32_t i = 0; i < kNumSpecial; ++i) special |= n == Vocabulary::special_name(i);
      if (!special) genes.emplace_back(n);
    }
    c.vocab = Vocabulary::from_genes(genes);
  }
  log::debug(str("prepare: vocabulary at ", phase.seconds(), " s"));
  for (size_t s = 0; s < c.sources.size(); ++s) {
    SourceInfo& si = c.sources[s];
    si.column_token.resize(si.n_genes);
    std::vector<uint8_t> seen(c.vocab.size(), 0);
    for (int64_t j = 0; j < si.n_genes; ++j) {
      int32_t t = c.vocab.find(canon[s][j]);
      si.column_token[j] = t;
      if (t < 0) {
        ++si.genes_dropped;
      } else if (seen[t]) {
        ++si.duplicate_columns;
      } else {
        seen[t] = 1;
      }
    }
    std::string msg = str(si.path, " [", si.matrix, "]: ", si.n_cells, " cells x ", si.n_genes, " genes; ",
                          si.genes_mapped, " mapped, ", si.genes_unmapped.size(), " not in the ",
                          fixed_vocab ? "vocabulary" : (table ? "gene table" : "table"));
    if (!si.genes_unmapped.empty()) {
      msg += " (e.g.";
      for (size_t i = 0; i < std::min<size_t>(5, si.genes_unmapped.size()); ++i) msg += " " + si.genes_unmapped[i];
      msg += fixed_vocab ? "; dropped)" : "; kept as their own tokens)";
    }
    if (si.duplicate_columns) msg += str("; ", si.duplicate_columns, " duplicate columns summed");
    log::info(msg);
    if (si.genes_dropped == si.n_genes)
      throw std::runtime_error(str(si.path, ": none of the ", si.n_genes, " genes of ", si.matrix,
                                   " is in the vocabulary of ", vocab_origin));
  }

  // 3. Read, map and sum each cell's genes (kept for the medians and, with keep_rows, for a
  //    loader in this process).
  log::debug(str("prepare: columns mapped at ", phase.seconds(), " s"));
  gatherer.run();
  const std::shared_ptr<const GatheredCells> gathered = gatherer.cells;
  c.stats = gatherer.stats;
  for (size_t s = 0; s < c.sources.size(); ++s) {
    SourceInfo& si = c.sources[s];
    si.cells_empty = gatherer.per_source[s].cells_empty;
    si.negative_values = gatherer.per_source[s].negative_values;
    if (si.cells_empty)
      log::warn(str(si.path, ": skipped ", si.cells_empty, " cells with no expressed gene in the vocabulary"));
    if (si.negative_values)
      log::warn(str(si.path, ": ", si.matrix, " has ", si.negative_values,
                    " negative values (treated as not expressed); is it scaled? counts are usually in X, raw/X or a layer"));
  }
  opened.clear();
  if (c.stats.n_cells == 0) throw std::runtime_error("prepare: no cell has an expressed gene in the vocabulary");
  c.stats.tokens_mean = static_cast<double>(c.stats.tokens_total) / c.stats.n_cells;

  log::debug(str("prepare: cells read at ", phase.seconds(), " s"));
  // 4. Gene medians (gene_medians: counts per gene and bucket of values, then only the values in
  //    each gene's middle buckets collected and selected from; cells and genes split between threads).
  //    Reused statistics: only which expressed genes have no median there.
  if (reuse_stats) {
    std::vector<uint8_t> expressed(c.vocab.size(), 0);
    for (int64_t i = 0; i < c.n_cells; ++i)
      for (int32_t t : gathered->tokens(i)) expressed[t] = 1;
    std::vector<std::string> examples;
    for (int32_t t = kNumSpecial; t < c.vocab.size(); ++t) {
      if (!expressed[t] || c.gene_medians[t] > 0) continue;
      if (++c.genes_without_median <= 5) examples.push_back(c.vocab.name(t));
    }
    if (c.genes_without_median) {
      std::string e;
      for (const auto& x : examples) e += " " + x;
      log::warn(str(c.genes_without_median, " genes expressed here have no median in ", opts.stats_from,
                    " (never expressed there; e.g.", e, "): ranked as if their median were 1"));
    }
  } else {
    c.gene_medians = gene_medians(*gathered, c.n_cells, c.vocab.size(), c.tokenize.target_sum, gatherer.lo_normalised,
                                  gatherer.hi_normalised, T);
  }
  log::debug(str("prepare: medians at ", phase.seconds(), " s"));
  if (opts.keep_rows) c.gathered = gathered;
  log::info(str("prepared ", c.stats.n_cells, " cells, ", c.vocab.n_genes(), " genes in ", gatherer.seconds(), " s (",
                static_cast<int64_t>(c.n_cells / std::max(gatherer.seconds(), 1e-9)), " cells/s); tokens/cell mean ",
                c.stats.tokens_mean, ", max ", c.stats.tokens_max));
  return c;
}

// ---- summary and manifest ------------------------------------------------------

namespace {
void write_summary(json::Writer& w, const PreparedCorpus& c, bool full_lists) {
  int64_t unmapped = 0, empty = 0;
  for (const auto& s : c.sources) {
    unmapped += static_cast<int64_t>(s.genes_unmapped.size());
    empty += s.cells_empty;
  }
  w.begin_object();
  w.field("n_cells", c.stats.n_cells);
  w.field("n_cells_total", c.n_cells);
  w.field("cells_empty", empty);
  w.field("n_genes", static_cast<int64_t>(c.vocab.n_genes()));
  w.field("vocab_size", static_cast<int64_t>(c.vocab.size()));
  w.field("genes_unmapped", unmapped);
  int64_t dropped = 0;
  for (const auto& s : c.sources) dropped += s.genes_dropped;
  w.field("genes_dropped", dropped);
  if (!c.stats_from.empty()) {
    w.field("stats_from", c.stats_from);
    w.field("genes_without_median", c.genes_without_median);
  }
  w.field("tokens_mean", c.stats.tokens_mean);
  w.field("tokens_max", c.stats.tokens_max);
  w.field("tokens_total", c.stats.tokens_total);
  w.field("mode", mode_name(c.tokenize.mode));
  w.field("max_len", static_cast<int64_t>(c.tokenize.max_len));
  w.field("n_bins", static_cast<int64_t>(c.tokenize.n_bins));
  w.key("files").begin_array();
  for (const auto& s : c.sources) {
    w.begin_object();
    w.field("path", s.path).field("matrix", s.matrix);
    w.field("n_cells", s.n_cells).field("n_genes", s.n_genes);
    w.field("genes_mapped", s.genes_mapped);
    w.field("genes_unmapped", static_cast<int64_t>(s.genes_unmapped.size()));
    w.field("genes_dropped", s.genes_dropped);
    w.field("duplicate_columns", s.duplicate_columns);
    w.field("cells_empty", s.cells_empty);
    w.field("negative_values", s.negative_values);
    std::vector<std::string> names = s.genes_unmapped;
    if (!full_lists && names.size() > 20) names.resize(20);
    w.field(full_lists ? "unmapped" : "unmapped_first", names);
    w.end_object();
  }
  w.end_array();
  w.end_object();
}
}  // namespace

std::string summary_json(const PreparedCorpus& c) {
  json::Writer w;
  write_summary(w, c, false);
  return w.str();
}

void save_corpus(const PreparedCorpus& c, const std::string& dir) {
  fs::create_directories(dir);
  c.vocab.save((fs::path(dir) / "vocab.tsv").string());
  {
    std::ofstream out(fs::path(dir) / "gene_medians.tsv");
    out << "token\tname\tmedian\n";
    char buf[64];
    for (int32_t t = kNumSpecial; t < c.vocab.size(); ++t) {
      std::snprintf(buf, sizeof buf, "%.17g", c.gene_medians[t]);
      out << t << '\t' << c.vocab.name(t) << '\t' << buf << '\n';
    }
    if (!out) throw std::runtime_error(str(dir, "/gene_medians.tsv: write failed"));
  }
  for (size_t s = 0; s < c.sources.size(); ++s) {
    std::ofstream out(fs::path(dir) / str("columns_", s, ".tsv"));
    out << "column\ttoken\n";
    for (size_t j = 0; j < c.sources[s].column_token.size(); ++j) out << j << '\t' << c.sources[s].column_token[j] << '\n';
  }
  json::Writer w;
  w.begin_object();
  w.field("format", "sctrain-prepared-1");
  w.key("tokenize").begin_object();
  w.field("mode", mode_name(c.tokenize.mode));
  w.field("max_len", static_cast<int64_t>(c.tokenize.max_len));
  w.field("n_bins", static_cast<int64_t>(c.tokenize.n_bins));
  w.field("target_sum", c.tokenize.target_sum);
  w.end_object();
  w.field("n_cells", c.n_cells);
  w.field("gene_table", c.gene_table.empty() ? std::string() : fs::absolute(c.gene_table).string());
  w.field("vocab_file", c.vocab_file.empty() ? std::string() : fs::absolute(c.vocab_file).string());
  w.field("stats_from", c.stats_from.empty() ? std::string() : fs::absolute(c.stats_from).string());
  w.field("genes_without_median", c.genes_without_median);
  w.key("sources").begin_array();
  for (size_t s = 0; s < c.sources.size(); ++s) {
    const SourceInfo& si = c.sources[s];
    w.begin_object();
    w.field("path", fs::absolute(si.path).string()).field("matrix", si.matrix);
    w.field("n_cells", si.n_cells).field("n_genes", si.n_genes).field("first_cell", si.first_cell);
    w.field("columns", str("columns_", s, ".tsv"));
    w.field("genes_mapped", si.genes_mapped).field("genes_dropped", si.genes_dropped);
    w.field("duplicate_columns", si.duplicate_columns).field("cells_empty", si.cells_empty);
    w.field("negative_values", si.negative_values);
    w.field("genes_unmapped", si.genes_unmapped);
    w.end_object();
  }
  w.end_array();
  w.key("stats").begin_object();
  w.field("n_cells", c.stats.n_cells).field("tokens_mean", c.stats.tokens_mean);
  w.field("tokens_max", c.stats.tokens_max).field("tokens_total", c.stats.tokens_total);
  w.end_object();
  w.key("summary");
  write_summary(w, c, false);
  w.end_object();
  std::ofstream out(fs::path(dir) / "manifest.json");
  out << w.str() << '\n';
  if (!out) throw std::runtime_error(str(dir, "/manifest.json: write failed"));
}

PreparedCorpus load_corpus(const std::string& dir) {
  const fs::path manifest = fs::path(dir) / "manifest.json";
  if (!fs::exists(manifest)) throw std::runtime_error(str(dir, ": not a prepared corpus (no manifest.json)"));
  YAML::Node m;
  try {
    m = YAML::LoadFile(manifest.string());
  } catch (const std::exception& e) {
    throw std::runtime_error(str(manifest.string(), ": ", e.what()));
  }
  if (!m["format"] || m["format"].as<std::string>() != "sctrain-prepared-1")
    throw std::runtime_error(str(manifest.string(), ": unknown format (expected sctrain-prepared-1)"));
  PreparedCorpus c;
  c.vocab = Vocabulary::load((fs::path(dir) / "vocab.tsv").string());
  c.tokenize.mode = parse_mode(m["tokenize"]["mode"].as<std::string>());
  c.tokenize.max_len = m["tokenize"]["max_len"].as<int32_t>();
  c.tokenize.n_bins = m["tokenize"]["n_bins"].as<int32_t>();
  c.tokenize.target_sum = m["tokenize"]["target_sum"].as<double>();
  c.n_cells = m["n_cells"].as<int64_t>();
  if (m["gene_table"]) c.gene_table = m["gene_table"].as<std::string>();
  if (m["vocab_file"]) c.vocab_file = m["vocab_file"].as<std::string>();
  if (m["stats_from"]) c.stats_from = m["stats_from"].as<std::string>();
  if (m["genes_without_median"]) c.genes_without_median = m["genes_without_median"].as<int64_t>();
  for (const auto& s : m["sources"]) {
    SourceInfo si;
    si.path = s["path"].as<std::string>();
    si.matrix = s["matrix"].as<std::string>();
    si.n_cells = s["n_cells"].as<int64_t>();
    si.n_genes = s["n_genes"].as<int64_t>();
    si.first_cell = s["first_cell"].as<int64_t>();
    si.genes_mapped = s["genes_mapped"].as<int64_t>();
    si.genes_dropped = s["genes_dropped"].as<int64_t>();
    si.duplicate_columns = s["duplicate_columns"].as<int64_t>();
    si.cells_empty = s["cells_empty"].as<int64_t>();
    si.negative_values = s["negative_values"].as<int64_t>();
    for (const auto& g : s["genes_unmapped"]) si.genes_unmapped.push_back(g.as<std::string>());
    const fs::path cols = fs::path(dir) / s["columns"].as<std::string>();
    std::ifstream in(cols);
    if (!in) throw std::runtime_error(str(cols.string(), ": cannot open"));
    std::string header;
    std::getline(in, header);
    si.column_token.assign(si.n_genes, -1);
    int64_t j;
    int32_t t;
    int64_t n = 0;
    while (in >> j >> t) {
      if (j < 0 || j >= si.n_genes || t >= c.vocab.size())
        throw std::runtime_error(str(cols.string(), ": bad row ", j, " ", t));
      si.column_token[j] = t;
      ++n;
    }
    if (n != si.n_genes) throw std::runtime_error(str(cols.string(), ": ", n, " rows, expected ", si.n_genes));
    c.sources.push_back(std::move(si));
  }
  c.stats.n_cells = m["stats"]["n_cells"].as<int64_t>();
  c.stats.tokens_mean = m["stats"]["tokens_mean"].as<double>();
  c.stats.tokens_max = m["stats"]["tokens_max"].as<int64_t>();
  c.stats.tokens_total = m["stats"]["tokens_total"].as<int64_t>();
  c.gene_medians.assign(c.vocab.size(), 0.0);
  const fs::path med = fs::path(dir) / "gene_medians.tsv";
  std::ifstream in(med);
  if (!in) throw std::runtime_error(str(med.string(), ": cannot open"));
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    auto a = line.find('\t'), b = line.rfind('\t');
    if (a == std::string::npos || a == b) throw std::runtime_error(str(med.string(), ": bad line '", line, "'"));
    int32_t t = std::stoi(line.substr(0, a));
    if (t < kNumSpecial || t >= c.vocab.size()) throw std::runtime_error(str(med.string(), ": token ", t, " out of range"));
    c.gene_medians[t] = std::strtod(line.c_str() + b + 1, nullptr);
  }
  return c;
}

std::vector<TokenizedCell> tokenize_cells(const PreparedCorpus& c, const std::vector<int64_t>& cell_ids) {
  std::vector<TokenizedCell> out(cell_ids.size());
  CellGenes cell;
  if (c.gathered) {
    const GatheredCells& g = *c.gathered;
    for (size_t i = 0; i < cell_ids.size(); ++i) {
      c.locate(cell_ids[i]);  // range check
      const int64_t id = cell_ids[i];
      if (g.length[id]) tokenize_cell(g.tokens(id), g.values(id), g.totals[id], c.gene_medians, c.tokenize, out[i]);
    }
    return out;
  }
  for (int s = 0; s < static_cast<int>(c.sources.size()); ++s) {
    const SourceInfo& si = c.sources[s];
    std::vector<size_t> which;   // positions in cell_ids that are in this source
    std::vector<int64_t> rows;   // their rows
    for (size_t i = 0; i < cell_ids.size(); ++i) {
      auto [src, row] = c.locate(cell_ids[i]);
      if (src == s) which.push_back(i), rows.push_back(row);
    }
    if (which.empty()) continue;
    io::CellRows read;
    const io::CellRows* m = nullptr;
    if (c.rows) {
      m = &(*c.rows)[s];
    } else {
      OpenedMatrix om = open_matrix(si.path, si.matrix);
      read = om.matrix.read_rows(rows);
      m = &read;
    }
    for (size_t k = 0; k < which.size(); ++k) {
      const int64_t r = c.rows ? rows[k] : static_cast<int64_t>(k);
      const int64_t a = m->indptr[r], n = m->row_nnz(r);
      gather_cell({m->indices.data() + a, static_cast<size_t>(n)}, {m->values.data() + a, static_cast<size_t>(n)},
                  si.column_token, si.has_duplicates(), cell);
      if (!cell.tokens.empty()) tokenize_cell(cell, c.gene_medians, c.tokenize, out[which[k]]);
    }
  }
  return out;
}

PreparedCorpus open_corpus(const std::vector<std::string>& data, PrepareOptions opts) {
  if (data.size() == 1 && fs::is_directory(data[0])) return load_corpus(data[0]);
  opts.sources.clear();
  for (const auto& d : data) opts.sources.push_back(parse_source(d, opts.default_matrix));
  opts.keep_rows = true;
  return prepare_corpus(opts);
}

}  // namespace sctrain::data
