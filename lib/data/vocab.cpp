#include "data/vocab.h"

#include <algorithm>
#include <fstream>
#include <stdexcept>

#include "data/name_hash.h"
#include "util/log.h"

namespace sctrain::data {

const char* Vocabulary::special_name(int32_t id) {
  static const char* names[kNumSpecial] = {"<pad>", "<cls>", "<mask>", "<unk>", "<eos>"};
  if (id < 0 || id >= kNumSpecial) throw std::out_of_range(str("not a special token id: ", id));
  return names[id];
}

Vocabulary::Vocabulary() {
  rehash(16);
  for (int32_t i = 0; i < kNumSpecial; ++i) add(special_name(i));
}

void Vocabulary::rehash(size_t slots) {
  slots_.assign(slots, -1);
  const size_t mask = slots - 1;
  for (int32_t id = 0; id < size(); ++id) {
    size_t j = hash_name(names_[id]) & mask;
    while (slots_[j] >= 0) j = (j + 1) & mask;
    slots_[j] = id;
  }
}

bool Vocabulary::add(std::string name) {
  if (2 * (names_.size() + 1) > slots_.size()) rehash(std::max<size_t>(16, 2 * slots_.size()));
  const size_t mask = slots_.size() - 1;
  size_t j = hash_name(name) & mask;
  for (; slots_[j] >= 0; j = (j + 1) & mask)
    if (names_[slots_[j]] == name) return false;
  slots_[j] = size();
  names_.push_back(std::move(name));
  return true;
}

Vocabulary Vocabulary::from_genes(const std::vector<std::string>& genes) {
  Vocabulary v;
  v.names_.reserve(genes.size() + kNumSpecial);
  size_t slots = 16;
  while (slots < 2 * (genes.size() + kNumSpecial)) slots *= 2;
  v.rehash(slots);  // sized once
  for (const auto& g : genes) {
    if (g.empty()) throw std::invalid_argument("vocabulary: empty gene name");
    if (!v.add(g)) throw std::invalid_argument(str("vocabulary: gene '", g, "' appears twice"));
  }
  return v;
}

int32_t Vocabulary::find(const std::string& name) const {
  const size_t mask = slots_.size() - 1;
  for (size_t j = hash_name(name) & mask; slots_[j] >= 0; j = (j + 1) & mask)
    if (names_[slots_[j]] == name) return slots_[j];
  return -1;
}

void sort_unique_names(std::vector<std::string_view>& names) {
  struct Key {
    uint64_t hi, lo;  // bytes 0-7 and 8-15, the first most significant, zeros past the end
    std::string_view name;
  };
  auto word = [](std::string_view n, size_t from) {
    uint64_t w = 0;
    for (size_t i = from; i < from + 8; ++i) w = w << 8 | (i < n.size() ? static_cast<unsigned char>(n[i]) : 0u);
    return w;
  };
  std::vector<Key> keys;
  keys.reserve(names.size());
  for (std::string_view n : names) keys.push_back({word(n, 0), word(n, 8), n});
  // Keys order as the names do, except that a name padded with zeros ties with one that has
  // those zeros: equal keys compare the names.
  std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) {
    if (a.hi != b.hi) return a.hi < b.hi;
    if (a.lo != b.lo) return a.lo < b.lo;
    return a.name < b.name;
  });
  names.clear();
  for (const Key& k : keys)
    if (names.empty() || names.back() != k.name) names.push_back(k.name);
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
