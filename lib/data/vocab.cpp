#include "data/vocab.h"

#include <fstream>
#include <stdexcept>

#include "util/log.h"

namespace sctrain::data {

const char* Vocabulary::special_name(int32_t id) {
  static const char* names[kNumSpecial] = {"<pad>", "<cls>", "<mask>", "<unk>", "<eos>"};
  if (id < 0 || id >= kNumSpecial) throw std::out_of_range(str("not a special token id: ", id));
  return names[id];
}

Vocabulary::Vocabulary() {
  for (int32_t i = 0; i < kNumSpecial; ++i) {
    names_.push_back(special_name(i));
    ids_[names_.back()] = i;
  }
}

Vocabulary Vocabulary::from_genes(const std::vector<std::string>& genes) {
  Vocabulary v;
  v.ids_.reserve(genes.size() + kNumSpecial);
  v.names_.reserve(genes.size() + kNumSpecial);
  for (const auto& g : genes) {
    if (g.empty()) throw std::invalid_argument("vocabulary: empty gene name");
    if (!v.ids_.emplace(g, v.size()).second)
      throw std::invalid_argument(str("vocabulary: gene '", g, "' appears twice"));
    v.names_.push_back(g);
  }
  return v;
}

int32_t Vocabulary::find(const std::string& name) const {
  auto it = ids_.find(name);
  return it == ids_.end() ? -1 : it->second;
}

Vocabulary Vocabulary::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(str(path, ": cannot open the vocabulary"));
  std::vector<std::string> names;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::string name = line;
    auto tab = line.find('\t');
    if (tab != std::string::npos) {
      long id = -1;
      try {
        id = std::stol(line.substr(0, tab));
      } catch (const std::exception&) {
        throw std::runtime_error(str(path, ":", lineno, ": expected 'id<TAB>name', got '", line, "'"));
      }
      if (id != static_cast<long>(names.size()))
        throw std::runtime_error(str(path, ":", lineno, ": id ", id, " out of order (expected ", names.size(), ")"));
      name = line.substr(tab + 1);
    }
    names.push_back(name);
  }
  if (static_cast<int32_t>(names.size()) < kNumSpecial)
    throw std::runtime_error(str(path, ": a vocabulary starts with the ", int(kNumSpecial), " special tokens"));
  for (int32_t i = 0; i < kNumSpecial; ++i)
    if (names[i] != special_name(i))
      throw std::runtime_error(str(path, ": token ", i, " must be ", special_name(i), ", got '", names[i], "'"));
  names.erase(names.begin(), names.begin() + kNumSpecial);
  try {
    return from_genes(names);
  } catch (const std::exception& e) {
    throw std::runtime_error(str(path, ": ", e.what()));
  }
}

void Vocabulary::save(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(str(path, ": cannot write the vocabulary"));
  for (int32_t i = 0; i < size(); ++i) out << i << '\t' << names_[i] << '\n';
  if (!out) throw std::runtime_error(str(path, ": write failed"));
}

}  // namespace sctrain::data
