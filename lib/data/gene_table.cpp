#include "data/gene_table.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <cstring>

#include "util/log.h"

namespace sctrain::data {

namespace {
void split_into(std::string_view s, char sep, std::vector<std::string_view>& out) {
  out.clear();
  size_t start = 0;
  for (;;) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) break;
    start = p + 1;
  }
}
bool is_ensembl(std::string_view s) { return s.size() > 4 && s.substr(0, 3) == "ENS"; }

// "ENSG00000121410.12" -> "ENSG00000121410" (a view of the prefix); other names unchanged.
std::string_view strip_version(std::string_view name) {
  if (!is_ensembl(name)) return name;
  const size_t dot = name.rfind('.');
  if (dot == std::string_view::npos || dot + 1 == name.size()) return name;
  for (size_t i = dot + 1; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return name;
  return name.substr(0, dot);
}

// The names a load indexes: an open-addressing set with a cheap hash, since every symbol,
// alias and ID of the table (~260k) is tested against the few thousand names in use.
class NameSet {
 public:
  explicit NameSet(const std::vector<std::string>& names) {
    size_t cap = 16;
    while (cap < 2 * names.size()) cap *= 2;
    slots_.assign(cap, std::string_view());
    tags_.assign(cap, 0);
    mask_ = cap - 1;
    for (const auto& n : names) {
      if (n.empty()) continue;
      const uint64_t h = hash(n);
      size_t i = h & mask_;
      while (tags_[i] != 0 && slots_[i] != n) i = (i + 1) & mask_;
      slots_[i] = n;
      tags_[i] = tag(h);
    }
  }
  bool contains(std::string_view k) const {
    const uint64_t h = hash(k);
    const uint32_t t = tag(h);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      if (tags_[i] == 0) return false;
      if (tags_[i] == t && slots_[i] == k) return true;
    }
  }

 private:
  static uint32_t tag(uint64_t h) { return static_cast<uint32_t>(h >> 32) | 1; }  // 0 = free slot
  static uint64_t hash(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ s.size();
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
      h ^= h >> 31;
    }
    uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * 0x94D049BB133111EBULL;
    return h ^ (h >> 29);
  }
  std::vector<std::string_view> slots_;  // views of the caller's names
  std::vector<uint32_t> tags_;           // hash tags, 4 bytes a slot: a miss rarely reads slots_
  size_t mask_ = 0;
};
}  // namespace

std::string strip_ensembl_version(std::string_view name) { return std::string(strip_version(name)); }

GeneTable GeneTable::load(const std::string& path, const std::vector<std::string>* only) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(str(path, ": cannot open the gene table"));
  GeneTable t;
  t.text_.resize(static_cast<size_t>(in.tellg()));
  in.seekg(0);
  if (!in.read(t.text_.data(), static_cast<std::streamsize>(t.text_.size())))
    throw std::runtime_error(str(path, ": cannot read the gene table"));
  if (t.text_.size() < 64) t.text_.reserve(64);  // keep it on the heap: views survive moves
  std::vector<std::string> wanted_names;     // keys worth indexing (all when `only` is null)
  if (only) {
    wanted_names.reserve(only->size());
    for (const auto& n : *only) wanted_names.push_back(strip_ensembl_version(n));
  }
  const NameSet wanted(wanted_names);
  auto want = [&](std::string_view k) { return !only || wanted.contains(k); };
  if (!only) {
    t.by_symbol_.reserve(100000);
    t.by_alias_.reserve(200000);
    t.by_ensembl_.reserve(60000);
  }
  std::string_view all(t.text_);
  t.canonical_.reserve(std::count(all.begin(), all.end(), '\n') + 1);
  std::vector<std::string_view> parts;
  int64_t lineno = 0;
  int col_symbol = -1, col_ensembl = -1, col_aliases = -1, need = 0;
  std::vector<std::string_view> f;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t end = all.find('\n', pos);
    if (end == std::string_view::npos) end = all.size();
    std::string_view line = all.substr(pos, end - pos);
    pos = end + 1;
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    split_into(line, '\t', f);
    if (lineno == 1) {
      for (int i = 0; i < static_cast<int>(f.size()); ++i) {
        if (f[i] == "symbol") col_symbol = i;
        if (f[i] == "ensembl_ids") col_ensembl = i;
        if (f[i] == "aliases") col_aliases = i;
      }
      if (col_symbol < 0 || col_ensembl < 0)
        throw std::runtime_error(str(path, ":1: header needs columns 'symbol' and 'ensembl_ids'"));
      need = std::max({col_symbol, col_ensembl, col_aliases}) + 1;
      continue;
    }
    if (line.empty()) continue;
    if (static_cast<int>(f.size()) < need)
      throw std::runtime_error(str(path, ":", lineno, ": expected ", need, " tab-separated fields, got ", f.size()));
    const int gene = static_cast<int>(t.canonical_.size());
    std::string_view symbol = f[col_symbol], first_ensembl;
    if (!f[col_ensembl].empty()) {
      split_into(f[col_ensembl], '|', parts);
      for (auto e : parts) {
        if (e.empty()) continue;
        std::string_view id = strip_version(e);  // stored stripped: a view of the prefix
        if (first_ensembl.empty()) first_ensembl = id;
        if (want(id)) t.by_ensembl_.emplace(id, gene);  // first gene in table order wins
      }
    }
    t.canonical_.push_back(first_ensembl.empty() ? symbol : first_ensembl);
    if (!symbol.empty() && want(symbol)) t.by_symbol_.emplace(symbol, gene);
    if (col_aliases >= 0 && !f[col_aliases].empty()) {
      split_into(f[col_aliases], '|', parts);
      for (auto a : parts)
        if (!a.empty() && want(a)) t.by_alias_.emplace(a, gene);
    }
  }
  if (t.canonical_.empty()) throw std::runtime_error(str(path, ": the gene table has no genes"));
  return t;
}

std::optional<std::string> GeneTable::canonical(std::string_view name) const {
  const std::string_view key = strip_version(name);
  if (is_ensembl(key)) {
    auto it = by_ensembl_.find(key);
    if (it != by_ensembl_.end()) return std::string(canonical_[it->second]);
  }
  if (auto it = by_symbol_.find(key); it != by_symbol_.end()) return std::string(canonical_[it->second]);
  if (auto it = by_alias_.find(key); it != by_alias_.end()) return std::string(canonical_[it->second]);
  return std::nullopt;
}

std::string default_gene_table() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("SCTRAIN_GENES"); env && *env) return env;
  const fs::path rel = fs::path("data") / "genes" / "human_genes.tsv";
  std::vector<fs::path> starts = {fs::current_path()};
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) starts.push_back(exe.parent_path());
  for (fs::path dir : starts) {
    for (int up = 0; up < 4 && !dir.empty(); ++up) {
      if (fs::exists(dir / rel)) return (dir / rel).string();
      if (dir == dir.parent_path()) break;
      dir = dir.parent_path();
    }
  }
  return "";
}

}  // namespace sctrain::data
