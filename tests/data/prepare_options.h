// Preparation options the data tests share: the given files through the shipped gene table, quiet.
#pragma once
#include <string>
#include <vector>

#include "data/corpus.h"
#include "test_data.h"

namespace sctrain::testing {

inline data::PrepareOptions prepare_options(const std::vector<std::string>& files, bool keep_rows = true) {
  data::PrepareOptions o;
  for (const auto& f : files) o.sources.push_back(data::parse_source(f));
  o.gene_table = project_data("genes/human_genes.tsv");
  o.keep_rows = keep_rows;
  o.progress = false;
  return o;
}

}  // namespace sctrain::testing
