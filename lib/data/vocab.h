// Gene vocabulary: token names <-> ids. Ids 0..kNumSpecial-1 are the special tokens
// (batch.h); genes follow. Saved as vocab.tsv: "id<TAB>name" per line, ids in order.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/batch.h"

namespace sctrain::data {

class Vocabulary {
 public:
  Vocabulary();  // the special tokens only
  // Specials followed by these gene names (must be unique and not special names).
  static Vocabulary from_genes(const std::vector<std::string>& genes);
  // vocab.tsv ("id<TAB>name", or one name per line with the specials first).
  static Vocabulary load(const std::string& path);
  void save(const std::string& path) const;

  int32_t size() const { return static_cast<int32_t>(names_.size()); }
  int32_t n_genes() const { return size() - kNumSpecial; }
  const std::string& name(int32_t id) const { return names_.at(id); }
  // Token id of a name, -1 when absent.
  int32_t find(const std::string& name) const;
  const std::vector<std::string>& names() const { return names_; }

  static const char* special_name(int32_t id);  // "<pad>", "<cls>", "<mask>", "<unk>", "<eos>"

 private:
  // Adds a name (false if it is there already).
  bool add(std::string name);
  void rehash(size_t slots);
  std::vector<std::string> names_;
  std::vector<int32_t> slots_;  // open addressing over names_: an id, or -1 for a free slot
};

// Sorts names as std::sort does (bytes compared as unsigned, a prefix first) and drops repeats.
// Ordered by each name's first 16 bytes as two integers first: Ensembl IDs share 9 bytes.
void sort_unique_names(std::vector<std::string_view>& names);

}  // namespace sctrain::data
