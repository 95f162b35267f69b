// The human gene table (data/genes/human_genes.tsv): maps symbols, aliases and Ensembl
// IDs onto one canonical name per gene, so files that name genes differently share tokens.
//
// Canonical name: the gene's first Ensembl ID when it has one, else its symbol.
// Lookup order (deterministic): Ensembl ID (version suffix ".12" stripped), then exact
// symbol, then alias. Where an ID or alias names several genes, the first gene in table
// order wins; an exact symbol always beats an alias.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sctrain::data {

class GeneTable {
 public:
  // Throws std::runtime_error naming the file and line on a malformed table.
  // With `only`, indexes just these names (faster; other names are then unknown).
  static GeneTable load(const std::string& path, const std::vector<std::string>* only = nullptr);
  // Moves only: keys are views into text_, whose heap buffer a move keeps.
  GeneTable() = default;
  GeneTable(GeneTable&&) = default;
  GeneTable& operator=(GeneTable&&) = default;
  size_t size() const { return canonical_.size(); }
  // Canonical name of a gene named `name`, nullopt when the table does not know it.
  std::optional<std::string> canonical(std::string_view name) const;

 private:
  std::string text_;                                    // the whole file; keys point into it
  std::vector<std::string_view> canonical_;             // per gene (table row)
  std::unordered_map<std::string_view, int> by_ensembl_, by_symbol_, by_alias_;
};

// "ENSG00000121410.12" -> "ENSG00000121410"; other names unchanged.
std::string strip_ensembl_version(std::string_view name);

// The default table location: $SCTRAIN_GENES, else data/genes/human_genes.tsv found
// from the current directory or the executable's parent directories; "" if none.
std::string default_gene_table();

}  // namespace sctrain::data
