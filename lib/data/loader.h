// Batches for training: shuffled, length-bucketed, padded to the longest cell of the
// batch, masked for masked-gene modelling, prepared ahead by background threads.
//
//   PreparedCorpus corpus = open_corpus({"data/pbmc3k_seurat.h5ad"}, PrepareOptions{});
//   Loader loader(corpus, LoaderConfig{}, rank, world_size);
//   for (;;) { Batch b = loader.next(); ... }      // endless; epochs advance by themselves
//   LoaderState s = loader.state();               // save with the checkpoint
//   loader.restore(s);                            // the next batch is the one that followed
//
// Determinism: everything is a function of (seed, epoch, cell id): the train/validation
// split (split_seed), the shard of each rank, the order of each epoch, the mask of each cell.
// Sharding: train cells are spread over ranks once (a fixed seeded permutation, cell i of
// it to rank i % world_size): no overlap, sizes differ by at most one. Each epoch shuffles
// a rank's own cells. Ranks may see different batch counts per epoch with a token budget.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/corpus.h"

namespace sctrain::data {

struct LoaderConfig {
  int64_t batch_size = 32;      // cells per batch; the cap when token_budget > 0
  int64_t token_budget = 0;     // > 0: batch_size x padded_len <= token_budget
  double val_fraction = 0.05;   // cells held out for validation (by hash of cell id)
  uint64_t split_seed = 0;      // the split's seed (kept apart from `seed`)
  uint64_t seed = 0;            // shuffling and masking
  bool mask = true;             // masked-gene modelling (else labels all kIgnoreLabel)
  double mask_prob = 0.15;      // share of gene tokens chosen (rounded, at least 1)
  double mask_token = 0.8;      // of the chosen: replaced by kMask
  double mask_random = 0.1;     // of the chosen: replaced by a random gene; the rest kept
  bool fill_to_max_len = false; // append unexpressed genes (of the cell's file) up to max_len
  int64_t bucket_cells = 4096;  // shuffled cells are sorted by length within windows this big
  int threads = 2;              // background workers (0 = build batches in next()); at most
                                // one fewer than the cores (next() builds too while it waits)
  int64_t prefetch = 8;         // batches ready ahead at most
  int64_t fail_at_batch = -1;   // tests only: building the n-th batch (from start/restore) throws
};

// Where the loader is: the next batch is batch `position` of epoch `epoch`.
struct LoaderState {
  int64_t epoch = 0;
  int64_t position = 0;
  uint64_t seed = 0;
  std::string to_json() const;
  static LoaderState from_json(const std::string& json);
};

class Loader {
 public:
  // Lists this rank's cells (train and validation). From a corpus that kept its mapped cells
  // (PreparedCorpus::gathered) each batch ranks its cells as it is built (the loader holds those
  // cells and the medians); otherwise the cells are tokenized up front, from corpus.rows or by
  // reading the files. Throws when this rank has no train cell. The loader keeps what it needs:
  // the corpus may go away afterwards.
  Loader(const PreparedCorpus& corpus, LoaderConfig cfg, int rank = 0, int world_size = 1);
  ~Loader();  // stops and joins the workers
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Next train batch (blocks until ready). A worker's exception is rethrown here.
  Batch next();
  // All validation cells of this rank, in cell-id order bucketed by length, masked with a
  // fixed seed (the same batches every call).
  std::vector<Batch> validation_batches() const;

  LoaderState state() const;
  void restore(const LoaderState& s);  // throws if s.seed != config seed

  int64_t n_train_cells() const;       // this rank
  int64_t n_val_cells() const;         // this rank
  int64_t batches_per_epoch() const;   // this rank
  int64_t epoch_of_next() const { return state().epoch; }
  const LoaderConfig& config() const;
  int32_t vocab_size() const;
  TokenMode mode() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Masks one cell in place. tokens[0] is CLS and is never chosen; positions 1..n-1 are
// genes. labels gets the original id at chosen positions, else kIgnoreLabel. Deterministic
// in (seed, epoch, cell_id). Random replacements are drawn from [kNumSpecial, vocab_size).
void mask_cell(int32_t* tokens, int32_t* labels, int32_t n, int32_t vocab_size, const LoaderConfig& cfg,
               uint64_t seed, int64_t epoch, int64_t cell_id);

// True when the cell is held out for validation.
bool is_validation_cell(int64_t cell_id, double val_fraction, uint64_t split_seed);

}  // namespace sctrain::data
