// A batch of tokenized cells: the hand-off from the data pipeline to the trainer.
// Plain arrays (no LibTorch), row-major [batch_size x seq_len], right-padded.
#pragma once
#include <cstdint>
#include <vector>

namespace sctrain::data {

// Special tokens occupy the first ids of every vocabulary.
enum SpecialToken : int32_t { kPad = 0, kCls = 1, kMask = 2, kUnk = 3, kEos = 4, kNumSpecial = 5 };

// Label value at positions that carry no loss.
constexpr int32_t kIgnoreLabel = -100;

struct Batch {
  int64_t batch_size = 0;
  int64_t seq_len = 0;             // longest cell in this batch (CLS included), not max_len
  std::vector<int32_t> tokens;     // [B*L] gene ids after masking; CLS first; kPad past length
  std::vector<int32_t> bins;       // [B*L] expression bin per position (binned mode), else empty
  std::vector<int32_t> lengths;    // [B] unpadded length of each cell, CLS included
  std::vector<int32_t> labels;     // [B*L] original gene id at masked positions, else kIgnoreLabel
  std::vector<int64_t> cell_ids;   // [B] global cell index (file order across the corpus)
  int64_t n_tokens() const {       // unpadded tokens
    int64_t n = 0;
    for (int32_t l : lengths) n += l;
    return n;
  }
};

}  // namespace sctrain::data
