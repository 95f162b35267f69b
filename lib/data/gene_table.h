// The human gene table (data/genes/human_genes.tsv): maps symbols, aliases and Ensembl
// IDs onto one canonical name per gene, so files that name genes differently share tokens.
//
// Canonical name: the gene's first Ensembl ID when it has one, else its symbol.
// Lookup order (deterministic): Ensembl ID (version suffix ".12" stripped), then exact
// symbol, then alias. Where an ID or alias names several genes, the first gene in table
// order wins; an exact symbol always beats an alias.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sctrain::data {

class GeneTable {
 public:
  // Throws std::runtime_error naming the file and line on a malformed table.
  // With `only`, indexes just these names (faster; other names are then unknown).
  static GeneTable load(const std::string& path, const std::vector<std::string>* only = nullptr);
  // Moves only: keys and canonical names are views into the file's text, which a move keeps.
  GeneTable() = default;
  GeneTable(GeneTable&&) = default;
  GeneTable& operator=(GeneTable&&) = default;
  size_t size() const { return n_genes_; }
  // Canonical name of a gene named `name`, nullopt when the table does not know it.
  std::optional<std::string> canonical(std::string_view name) const;
  // Loaded with `only`: what canonical((*only)[i]) answers, from the slot that name was given at
  // load (no second hash and probe); a view into the table.
  std::optional<std::string_view> canonical_in_use(size_t i) const;

  // Per name: the canonical name of the first gene (table order) having it as an Ensembl ID,
  // as its symbol, as an alias (empty view: none). Public for the implementation's index.
  struct Entry {
    std::string_view by_ensembl, by_symbol, by_alias;
  };

 private:
  std::shared_ptr<const char> text_;   // the whole file (mapped, else read); views point into it
  std::shared_ptr<const std::string> names_;  // with `only`: those names, which keys view
  size_t n_genes_ = 0;
  std::vector<std::string_view> keys_;  // open addressing: a name (version stripped) per slot
  std::vector<uint32_t> tags_;          // hash tag per slot, 0 = free
  std::vector<Entry> entries_;
  std::vector<int32_t> in_use_;         // with `only`: each name's slot, -1 for an empty name
  size_t used_ = 0;
  const Entry* find(std::string_view key) const;
  Entry* find_or_add(std::string_view key, uint64_t hash, bool add);
  std::optional<std::string_view> answer(std::string_view key, const Entry& e) const;
  void grow();
  void rehash(size_t cap);  // cap: a power of two above 2 * used_
};

// "ENSG00000121410.12" -> "ENSG00000121410"; other names unchanged.
std::string strip_ensembl_version(std::string_view name);

// The default table location: $SCTRAIN_GENES, else data/genes/human_genes.tsv found
// from the current directory or the executable's parent directories; "" if none.
std::string default_gene_table();

}  // namespace sctrain::data
