#include "data/loader.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <map>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <thread>

#include "data/hash_rng.h"
#include "data/source_reader.h"
#include "util/json.h"
#include "util/log.h"

namespace sctrain::data {

// ---- pure pieces ---------------------------------------------------------------

bool is_validation_cell(int64_t cell_id, double val_fraction, uint64_t split_seed) {
  if (val_fraction <= 0) return false;
  return unit_double(hash_keys(split_seed, 0x7a11da7eULL, static_cast<uint64_t>(cell_id))) < val_fraction;
}

void mask_cell(int32_t* tokens, int32_t* labels, int32_t n, int32_t vocab_size, const LoaderConfig& cfg,
               uint64_t seed, int64_t epoch, int64_t cell_id) {
  for (int32_t i = 0; i < n; ++i) labels[i] = kIgnoreLabel;
  const int32_t genes = n - 1;
  if (!cfg.mask || genes <= 0 || cfg.mask_prob <= 0) return;
  int32_t k = static_cast<int32_t>(std::llround(cfg.mask_prob * genes));
  k = std::clamp(k, 1, genes);
  HashStream rng(hash_keys(seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(cell_id), 0x3a5cULL));
  // k distinct genes by Floyd's sampling (one draw each, a bitmap of the chosen), then what
  // each becomes from one more draw: its top 32 bits choose MASK / random / kept, its low 32
  // bits the random gene.
  thread_local std::vector<uint64_t> chosen;
  chosen.assign(static_cast<size_t>(genes) / 64 + 1, 0);
  const int32_t n_genes_vocab = vocab_size - kNumSpecial;
  const uint64_t to_mask = static_cast<uint64_t>(cfg.mask_token * 4294967296.0);
  const uint64_t to_random = static_cast<uint64_t>((cfg.mask_token + cfg.mask_random) * 4294967296.0);
  for (int32_t j = genes - k; j < genes; ++j) {
    int32_t t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(j) + 1));
    if (chosen[t >> 6] >> (t & 63) & 1) t = j;
    chosen[t >> 6] |= uint64_t{1} << (t & 63);
    const int32_t p = 1 + t;
    labels[p] = tokens[p];
    const uint64_t r = rng.next(), u = r >> 32;
    const int32_t random_gene =
        n_genes_vocab > 0 ? kNumSpecial + static_cast<int32_t>(((r & 0xffffffffULL) * static_cast<uint64_t>(n_genes_vocab)) >> 32)
                          : tokens[p];
    const int32_t other = u < to_random ? random_gene : tokens[p];  // no branch on a random draw
    tokens[p] = u < to_mask ? kMask : other;
  }
}

std::string LoaderState::to_json() const {
  json::Writer w;
  w.begin_object().field("epoch", epoch).field("position", position).field("seed", seed).end_object();
  return w.str();
}

LoaderState LoaderState::from_json(const std::string& text) {
  try {
    YAML::Node n = YAML::Load(text);
    LoaderState s;
    s.epoch = n["epoch"].as<int64_t>();
    s.position = n["position"].as<int64_t>();
    s.seed = n["seed"].as<uint64_t>();
    return s;
  } catch (const std::exception& e) {
    throw std::runtime_error(str("loader state: cannot parse '", text, "': ", e.what()));
  }
}

// ---- the loader ----------------------------------------------------------------

namespace {

// An allocator whose resize leaves new elements uninitialised: stores are laid out first,
// then filled by several threads.
template <typename T>
struct NoInit : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = NoInit<U>;
  };
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) ::new (static_cast<void*>(p)) U;
    else ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// Tokenized cells, CLS not included: cell i's genes are genes[offsets[i]..offsets[i+1]).
struct CellStore {
  std::vector<int64_t> cell_id;
  std::vector<int32_t> source;
  std::vector<int64_t> offsets{0};
  std::vector<int32_t, NoInit<int32_t>> genes;
  std::vector<uint8_t, NoInit<uint8_t>> bins;
  int64_t size() const { return static_cast<int64_t>(cell_id.size()); }
  int32_t n_genes(int64_t i) const { return static_cast<int32_t>(offsets[i + 1] - offsets[i]); }
  void add(int64_t id, int32_t src, const TokenizedCell& t) {
    cell_id.push_back(id);
    source.push_back(src);
    genes.insert(genes.end(), t.genes.begin(), t.genes.end());
    bins.insert(bins.end(), t.bins.begin(), t.bins.end());
    offsets.push_back(static_cast<int64_t>(genes.size()));
  }
  void append(const CellStore& o) {
    const int64_t base = static_cast<int64_t>(genes.size());
    cell_id.insert(cell_id.end(), o.cell_id.begin(), o.cell_id.end());
    source.insert(source.end(), o.source.begin(), o.source.end());
    genes.insert(genes.end(), o.genes.begin(), o.genes.end());
    bins.insert(bins.end(), o.bins.begin(), o.bins.end());
    for (size_t i = 1; i < o.offsets.size(); ++i) offsets.push_back(base + o.offsets[i]);
  }
};

// An epoch's batches: batch b holds cells[starts[b]..starts[b+1]) (indices into the store).
struct Plan {
  std::vector<int32_t> cells;
  std::vector<int64_t> starts{0};
  int64_t size() const { return static_cast<int64_t>(starts.size()) - 1; }
};

struct Cursor {
  int64_t epoch = 0, position = 0;
};

}  // namespace

struct Loader::Impl {
  LoaderConfig cfg;
  int rank, world;
  TokenizeConfig tok;
  int32_t vocab_size = 0;
  CellStore train, val;
  std::vector<std::vector<int32_t>> source_tokens;  // per source: its tokens (for filling)
  // The corpus's mapped cells and medians when it kept its cells: batches rank their cells
  // themselves (no store of every cell's tokens). Else null and the stores hold the tokens.
  std::shared_ptr<const GatheredCells> gathered;
  std::vector<double> medians;

  // Producer/consumer state.
  std::mutex mu;
  std::condition_variable cv_work, cv_ready;
  std::vector<std::thread> workers;
  bool stop = false;
  int64_t next_claim = 0, next_deliver = 0;
  Cursor claim_cursor, delivered;  // delivered: where the next batch handed out comes from
  struct Ready {
    Batch batch;
    Cursor after;
    std::exception_ptr error;
  };
  std::map<int64_t, Ready> ready;
  std::map<int64_t, std::shared_ptr<const Plan>> plans;

  int32_t length_of(const CellStore& st, int64_t i) const {
    return cfg.fill_to_max_len ? tok.max_len : 1 + st.n_genes(i);
  }

  // Cuts cells (already in the wanted order, sorted by length within windows) into batches.
  void cut(const CellStore& st, const std::vector<int32_t>& order, Plan& plan) const {
    int64_t count = 0, longest = 0;
    for (int32_t c : order) {
      int64_t len = length_of(st, c);
      int64_t l = std::max(longest, len);
      bool fits = count < cfg.batch_size && (cfg.token_budget <= 0 || (count + 1) * l <= cfg.token_budget);
      if (count > 0 && !fits) {
        plan.starts.push_back(static_cast<int64_t>(plan.cells.size()));
        count = 0;
        l = len;
      }
      plan.cells.push_back(c);
      ++count;
      longest = l;
    }
    if (count > 0) plan.starts.push_back(static_cast<int64_t>(plan.cells.size()));
  }

  // Each window of the order sorted by length, stably: a counting sort (lengths are at most
  // max_len), the same order as std::stable_sort without its ~12 comparisons a cell.
  void sort_windows(const CellStore& st, std::vector<int32_t>& order) const {
    const int64_t w = std::max<int64_t>(cfg.bucket_cells, 1), n = static_cast<int64_t>(order.size());
    std::vector<int32_t> len(n), out(n);
    int32_t longest = 0;
    for (int64_t i = 0; i < n; ++i) longest = std::max(longest, len[i] = length_of(st, order[i]));
    std::vector<int64_t> at(static_cast<size_t>(longest) + 1);
    for (int64_t a = 0; a < n; a += w) {
      const int64_t b = std::min(a + w, n);
      std::fill(at.begin(), at.end(), 0);
      for (int64_t i = a; i < b; ++i) ++at[len[i]];
      int64_t sum = a;
      for (auto& x : at) {
        const int64_t c = x;
        x = sum;
        sum += c;
      }
      for (int64_t i = a; i < b; ++i) out[at[len[i]]++] = order[i];
    }
    order.swap(out);
  }

  std::shared_ptr<const Plan> make_plan(int64_t epoch) const {
    std::vector<int32_t> order(train.size());
    std::iota(order.begin(), order.end(), 0);
    HashStream rng(hash_keys(cfg.seed, static_cast<uint64_t>(epoch), 0x5ffe1eULL));
    for (int64_t i = static_cast<int64_t>(order.size()) - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
    sort_windows(train, order);
    Plan cut_plan;
    cut(train, order, cut_plan);
    // Shuffle the batch order so that lengths are mixed over the epoch.
    std::vector<int64_t> bs(cut_plan.size());
    std::iota(bs.begin(), bs.end(), 0);
    for (int64_t i = static_cast<int64_t>(bs.size()) - 1; i > 0; --i) std::swap(bs[i], bs[rng.below(i + 1)]);
    auto plan = std::make_shared<Plan>();
    plan->cells.reserve(cut_plan.cells.size());
    for (int64_t b : bs) {
      plan->cells.insert(plan->cells.end(), cut_plan.cells.begin() + cut_plan.starts[b],
                         cut_plan.cells.begin() + cut_plan.starts[b + 1]);
      plan->starts.push_back(static_cast<int64_t>(plan->cells.size()));
    }
    return plan;
  }

  // Under mu.
  std::shared_ptr<const Plan> plan_for(int64_t epoch) {
    auto it = plans.find(epoch);
    if (it != plans.end()) return it->second;
    while (plans.size() >= 3) plans.erase(plans.begin());
    return plans[epoch] = make_plan(epoch);
  }

  Batch build(const CellStore& st, const int32_t* cells, int64_t n, int64_t epoch, uint64_t seed) const {
    Batch b;
    b.batch_size = n;
    int64_t L = 0;
    for (int64_t i = 0; i < n; ++i) L = std::max<int64_t>(L, length_of(st, cells[i]));
    b.seq_len = L;
    b.tokens.assign(n * L, kPad);
    b.labels.assign(n * L, kIgnoreLabel);
    if (tok.mode == TokenMode::Binned) b.bins.assign(n * L, 0);
    b.lengths.resize(n);
    b.cell_ids.resize(n);
    thread_local std::vector<uint8_t> present, cell_bins;
    if (gathered) {
      // The batch's cells lie anywhere in the gathered chunks: their lines are asked for up
      // front, so that ranking one cell overlaps fetching the next ones.
      for (int64_t i = 0; i < n; ++i) {
        const int64_t id = st.cell_id[cells[i]];
        const std::span<const int32_t> t = gathered->tokens(id);
        const std::span<const float> v = gathered->values(id);
        for (size_t k = 0; k < t.size(); k += 16) {
          __builtin_prefetch(t.data() + k);
          __builtin_prefetch(v.data() + k);
        }
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = cells[i];
      int32_t* row = b.tokens.data() + i * L;
      const int32_t g = st.n_genes(c);
      row[0] = kCls;
      const uint8_t* bins = nullptr;  // binned mode: the cell's bins
      if (gathered) {
        const int64_t id = st.cell_id[c];
        cell_bins.resize(b.bins.empty() ? 0 : g);
        tokenize_cell_into(gathered->tokens(id), gathered->values(id), gathered->totals[id], medians, tok, row + 1,
                           cell_bins.data());
        bins = cell_bins.data();
      } else {
        std::copy(st.genes.data() + st.offsets[c], st.genes.data() + st.offsets[c] + g, row + 1);
        if (!b.bins.empty()) bins = st.bins.data() + st.offsets[c];
      }
      if (!b.bins.empty()) std::copy(bins, bins + g, b.bins.data() + i * L + 1);
      const int32_t* genes = row + 1;
      int32_t len = 1 + g;
      if (cfg.fill_to_max_len && len < tok.max_len) {
        // Unexpressed genes measured in the cell's file, from a per-cell offset, wrapping.
        const auto& pool = source_tokens[st.source[c]];
        present.assign(vocab_size, 0);
        for (int32_t k = 0; k < g; ++k) present[genes[k]] = 1;
        const size_t start = pool.empty() ? 0 : hash_keys(seed, 0xf111ULL, static_cast<uint64_t>(st.cell_id[c])) % pool.size();
        for (size_t k = 0; k < pool.size() && len < tok.max_len; ++k) {
          int32_t t = pool[(start + k) % pool.size()];
          if (!present[t]) row[len++] = t;
        }
      }
      b.lengths[i] = len;
      b.cell_ids[i] = st.cell_id[c];
      mask_cell(row, b.labels.data() + i * L, len, vocab_size, cfg, seed, epoch, st.cell_id[c]);
    }
    return b;
  }

  // Claims the next batch (under mu, held by lk; the prefetch window must allow it), builds it
  // with mu released and files it as ready.
  void claim_and_build(std::unique_lock<std::mutex>& lk) {
    const int64_t seq = next_claim++;
    const Cursor cur = claim_cursor;
    const std::shared_ptr<const Plan> plan = plan_for(cur.epoch);
    Cursor after = cur;
    if (++after.position >= plan->size()) after = {cur.epoch + 1, 0};
    claim_cursor = after;
    lk.unlock();
    Ready r;
    r.after = after;
    try {
      if (seq == cfg.fail_at_batch) throw std::runtime_error(str("loader: injected failure at batch ", seq));
      r.batch = build(train, plan->cells.data() + plan->starts[cur.position],
                      plan->starts[cur.position + 1] - plan->starts[cur.position], cur.epoch, cfg.seed);
    } catch (...) {
      r.error = std::current_exception();
    }
    lk.lock();
    ready.emplace(seq, std::move(r));
    cv_ready.notify_all();
  }
  bool window_open() const { return next_claim < next_deliver + std::max<int64_t>(cfg.prefetch, 1); }

  void worker_loop() {
    std::unique_lock lk(mu);
    for (;;) {
      cv_work.wait(lk, [&] { return stop || window_open(); });
      if (stop) return;
      claim_and_build(lk);
    }
  }

  // The caller of next() builds batches too while the one due is not ready, so the workers are
  // at most one fewer than the cores: on 2 cores, 2 workers and the caller time-sliced 3 builders
  // (kang's batches, ranked as they are built: 14.3 -> 11.8 ms median with 1 worker).
  void start() {
    stop = false;
    const int cores = static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
    for (int i = 0; i < std::min(cfg.threads, cores - 1); ++i) workers.emplace_back([this] { worker_loop(); });
  }

  void halt() {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    cv_work.notify_all();
    for (auto& t : workers) t.join();
    workers.clear();
  }

  void tokenize_all(const PreparedCorpus& corpus);
};

void Loader::Impl::tokenize_all(const PreparedCorpus& corpus) {
  // Roles: 1 = train cell of this rank, 2 = validation cell of this rank, 0 = not ours.
  const int64_t n = corpus.n_cells;
  std::vector<uint8_t> role(n, 0);
  std::vector<int64_t> train_ids;
  int64_t val_count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (is_validation_cell(i, cfg.val_fraction, cfg.split_seed)) {
      if (val_count++ % world == rank) role[i] = 2;
    } else {
      train_ids.push_back(i);
    }
  }
  HashStream rng(hash_keys(cfg.split_seed, 0x54a2dULL));
  for (int64_t i = static_cast<int64_t>(train_ids.size()) - 1; i > 0; --i)
    std::swap(train_ids[i], train_ids[rng.below(i + 1)]);
  for (size_t p = rank; p < train_ids.size(); p += world) role[train_ids[p]] = 1;

  CellGenes cell;
  TokenizedCell tc;
  auto chrono_start = std::chrono::steady_clock::now();
  if (corpus.gathered) {
    // Cells already mapped: the stores only list this rank's cells (in id order) and their
    // lengths; each batch ranks its cells into its rows (build). No store of every cell's tokens.
    const GatheredCells& g = *corpus.gathered;
    const int64_t keep = std::max<int64_t>(tok.max_len - 1, 0);
    int src = 0;
    for (int64_t id = 0; id < n; ++id) {
      if (!role[id] || g.length[id] == 0) continue;
      while (id >= corpus.sources[src].first_cell + corpus.sources[src].n_cells) ++src;
      CellStore& st = role[id] == 1 ? train : val;
      st.cell_id.push_back(id);
      st.source.push_back(src);
      st.offsets.push_back(st.offsets.back() + std::min<int64_t>(g.length[id], keep));
    }
    gathered = corpus.gathered;
    medians = corpus.gene_medians;
  }
  // Or read from the files (a prepared DIR), logging progress every 2 s as prepare does.
  int64_t read = 0;
  auto last_log = std::chrono::steady_clock::now();
  for (size_t s = 0; !corpus.gathered && s < corpus.sources.size(); ++s) {
    const SourceInfo& si = corpus.sources[s];
    auto process = [&](const io::CellRows& rows, int64_t begin) {
      read += rows.n_rows();
      if (const auto now = std::chrono::steady_clock::now(); now - last_log > std::chrono::seconds(2)) {
        last_log = now;
        const double secs = std::chrono::duration<double>(now - chrono_start).count();
        log::info(str("loader: read and tokenized ", read, "/", n, " cells (", si.path, "), ",
                      static_cast<int64_t>(read / secs), " cells/s"));
      }
      for (int64_t r = 0; r < rows.n_rows(); ++r) {
        const int64_t id = si.first_cell + begin + r;
        if (!role[id]) continue;
        const int64_t a = rows.indptr[r], nn = rows.row_nnz(r);
        try {
          gather_cell({rows.indices.data() + a, static_cast<size_t>(nn)}, {rows.values.data() + a, static_cast<size_t>(nn)},
                      si.column_token, si.has_duplicates(), cell);
        } catch (const std::invalid_argument& e) {
          throw std::runtime_error(str(si.path, ": ", si.matrix, " cell ", begin + r, ": ", e.what()));
        }
        if (cell.tokens.empty()) continue;  // counted and logged by prepare
        tokenize_cell(cell, corpus.gene_medians, tok, tc);
        (role[id] == 1 ? train : val).add(id, static_cast<int32_t>(s), tc);
      }
    };
    if (corpus.rows) {
      const io::CellRows& rows = (*corpus.rows)[s];
      if (rows.n_rows() != si.n_cells)
        throw std::logic_error(str(si.path, ": kept rows (", rows.n_rows(), ") != cells (", si.n_cells, ")"));
      process(rows, 0);
    } else {
      OpenedMatrix m = open_matrix(si.path, si.matrix);
      if (m.matrix.info().n_rows != si.n_cells || m.matrix.info().n_cols != si.n_genes)
        throw std::runtime_error(str(si.path, ": ", si.matrix, " is ", m.matrix.info().n_rows, " x ", m.matrix.info().n_cols,
                                     " but was prepared as ", si.n_cells, " x ", si.n_genes, "; prepare again"));
      for_each_chunk(m.matrix, 1024, process);
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - chrono_start).count();
  log::info(str("loader rank ", rank, "/", world, ": ", train.size(), " train + ", val.size(), " validation cells ",
                gathered ? "listed (ranked as batches are built)" : "tokenized", " (",
                train.offsets.back() + val.offsets.back(), " gene tokens) in ", secs, " s"));
}

Loader::Loader(const PreparedCorpus& corpus, LoaderConfig cfg, int rank, int world_size) : impl_(std::make_unique<Impl>()) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw std::invalid_argument(str("loader: bad rank ", rank, " of world size ", world_size));
  if (cfg.batch_size < 1) throw std::invalid_argument(str("loader: batch_size must be >= 1, got ", cfg.batch_size));
  if (cfg.val_fraction < 0 || cfg.val_fraction >= 1)
    throw std::invalid_argument(str("loader: val_fraction must be in [0, 1), got ", cfg.val_fraction));
  if (cfg.mask_prob < 0 || cfg.mask_prob > 1 || cfg.mask_token < 0 || cfg.mask_random < 0 ||
      cfg.mask_token + cfg.mask_random > 1)
    throw std::invalid_argument("loader: mask probabilities must lie in [0, 1] with mask_token + mask_random <= 1");
  Impl& m = *impl_;
  m.cfg = cfg;
  m.rank = rank;
  m.world = world_size;
  m.tok = corpus.tokenize;
  m.vocab_size = corpus.vocab.size();
  if (static_cast<int64_t>(corpus.gene_medians.size()) != m.vocab_size)
    throw std::invalid_argument("loader: the corpus has no gene medians for its vocabulary");
  if (cfg.token_budget > 0 && cfg.token_budget < (cfg.fill_to_max_len ? m.tok.max_len : corpus.stats.tokens_max))
    log::warn(str("loader: token budget ", cfg.token_budget, " is below the longest cell; such cells go alone in a batch"));
  // Each source's tokens, ascending (marked, then listed: no sort), for filling only: the caller
  // waits for this, and a sort of pbmc3k's 13.7k columns was ~0.3 ms of it.
  if (cfg.fill_to_max_len)
    for (const auto& si : corpus.sources) {
      std::vector<uint8_t> has(static_cast<size_t>(m.vocab_size), 0);
      for (int32_t x : si.column_token)
        if (x >= 0) has[x] = 1;
      std::vector<int32_t> t;
      for (int32_t x = 0; x < m.vocab_size; ++x)
        if (has[x]) t.push_back(x);
      m.source_tokens.push_back(std::move(t));
    }
  m.tokenize_all(corpus);
  if (m.train.size() == 0)
    throw std::runtime_error(str("loader: rank ", rank, " of ", world_size, " has no training cell (corpus: ",
                                 corpus.stats.n_cells, " cells, val_fraction ", cfg.val_fraction, ")"));
  m.start();
}

Loader::~Loader() { impl_->halt(); }

Batch Loader::next() {
  Impl& m = *impl_;
  if (m.cfg.threads <= 0) {
    std::shared_ptr<const Plan> plan;
    Cursor cur;
    {
      std::lock_guard lk(m.mu);
      cur = m.delivered;
      plan = m.plan_for(cur.epoch);
      m.delivered.position++;
      if (m.delivered.position >= plan->size()) m.delivered = {cur.epoch + 1, 0};
    }
    return m.build(m.train, plan->cells.data() + plan->starts[cur.position],
                   plan->starts[cur.position + 1] - plan->starts[cur.position], cur.epoch, m.cfg.seed);
  }
  Impl::Ready r;
  {
    std::unique_lock lk(m.mu);
    // While the batch due is not ready, this thread builds the next unclaimed one itself rather
    // than sleeping until a worker hands it over (on two cores the workers and this thread share
    // the CPUs; each sleep and wake-up cost about as much as building a batch).
    while (!m.ready.count(m.next_deliver)) {
      if (m.window_open()) m.claim_and_build(lk);
      else m.cv_ready.wait(lk, [&] { return m.ready.count(m.next_deliver) > 0; });
    }
    auto it = m.ready.find(m.next_deliver);
    r = std::move(it->second);
    m.ready.erase(it);
    ++m.next_deliver;
    m.delivered = r.after;
  }
  m.cv_work.notify_all();
  if (r.error) std::rethrow_exception(r.error);
  return std::move(r.batch);
}

std::vector<Batch> Loader::validation_batches() const {
  const Impl& m = *impl_;
  std::vector<int32_t> order(m.val.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return m.length_of(m.val, x) < m.length_of(m.val, y); });
  Plan plan;
  m.cut(m.val, order, plan);
  std::vector<Batch> out;
  const uint64_t val_seed = hash_keys(m.cfg.split_seed, 0x7a1ULL);
  for (int64_t b = 0; b < plan.size(); ++b)
    out.push_back(m.build(m.val, plan.cells.data() + plan.starts[b], plan.starts[b + 1] - plan.starts[b], 0, val_seed));
  return out;
}

LoaderState Loader::state() const {
  std::lock_guard lk(impl_->mu);
  return LoaderState{impl_->delivered.epoch, impl_->delivered.position, impl_->cfg.seed};
}

void Loader::restore(const LoaderState& s) {
  Impl& m = *impl_;
  if (s.seed != m.cfg.seed)
    throw std::invalid_argument(str("loader: state has seed ", s.seed, " but the loader was made with seed ", m.cfg.seed));
  if (s.epoch < 0 || s.position < 0) throw std::invalid_argument("loader: negative epoch or position in the state");
  m.halt();
  std::lock_guard lk(m.mu);
  int64_t size = m.plan_for(s.epoch)->size();
  if (s.position > size)
    throw std::invalid_argument(str("loader: position ", s.position, " beyond epoch ", s.epoch, "'s ", size, " batches"));
  Cursor c{s.epoch, s.position};
  if (c.position == size) c = {s.epoch + 1, 0};
  m.ready.clear();
  m.next_claim = m.next_deliver = 0;
  m.claim_cursor = m.delivered = c;
  m.start();
}

int64_t Loader::n_train_cells() const { return impl_->train.size(); }
int64_t Loader::n_val_cells() const { return impl_->val.size(); }
int64_t Loader::batches_per_epoch() const {
  std::lock_guard lk(impl_->mu);
  return impl_->plan_for(impl_->delivered.epoch)->size();
}
const LoaderConfig& Loader::config() const { return impl_->cfg; }
int32_t Loader::vocab_size() const { return impl_->vocab_size; }
TokenMode Loader::mode() const { return impl_->tok.mode; }

}  // namespace sctrain::data
