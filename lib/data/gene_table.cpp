#include "data/gene_table.h"

#include <algorithm>
#include <bit>
#include <filesystem>
#include <stdexcept>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "data/name_hash.h"
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
// Calls fn(q) for every '\t' and '\n' in [p, end), in order: 16 bytes compared at a time where
// SSE2 is there (all x86-64), one at a time for the rest.
template <typename Fn>
void for_each_separator(const char* p, const char* end, Fn&& fn) {
#if defined(__SSE2__)
  const __m128i tab = _mm_set1_epi8('\t'), nl = _mm_set1_epi8('\n');
  for (; end - p >= 16; p += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    unsigned m = static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, tab), _mm_cmpeq_epi8(x, nl))));
    while (m) {
      fn(p + std::countr_zero(m));
      m &= m - 1;
    }
  }
#endif
  for (; p < end; ++p)
    if (*p == '\t' || *p == '\n') fn(p);
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

uint32_t tag_of(uint64_t h) { return static_cast<uint32_t>(h >> 32) | 1; }  // 0 = free slot

// The file's bytes: mapped read-only (no copy, no fresh pages to fault in), else read.
std::shared_ptr<const char> read_text(const std::string& path, size_t& size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(str(path, ": cannot open the gene table"));
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    const size_t n = static_cast<size_t>(st.st_size);
    void* p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (p != MAP_FAILED) {
      ::close(fd);
      size = n;
      return std::shared_ptr<const char>(static_cast<const char*>(p),
                                         [n](const char* q) { ::munmap(const_cast<char*>(q), n); });
    }
  }
  auto text = std::make_shared<std::string>();
  char buf[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0) {
      ::close(fd);
      throw std::runtime_error(str(path, ": cannot read the gene table"));
    }
    if (got == 0) break;
    text->append(buf, static_cast<size_t>(got));
  }
  ::close(fd);
  size = text->size();
  return std::shared_ptr<const char>(text, text->data());
}
}  // namespace

std::string strip_ensembl_version(std::string_view name) { return std::string(strip_version(name)); }

void GeneTable::grow() { rehash(std::max<size_t>(16, 2 * tags_.size())); }

void GeneTable::rehash(size_t cap) {
  std::vector<std::string_view> keys(cap);
  std::vector<uint32_t> tags(cap, 0);
  std::vector<Entry> entries(cap);
  for (size_t i = 0; i < tags_.size(); ++i) {
    if (!tags_[i]) continue;
    size_t j = hash_name(keys_[i]) & (cap - 1);
    while (tags[j]) j = (j + 1) & (cap - 1);
    keys[j] = keys_[i];
    tags[j] = tags_[i];
    entries[j] = entries_[i];
  }
  keys_.swap(keys);
  tags_.swap(tags);
  entries_.swap(entries);
}

GeneTable::Entry* GeneTable::find_or_add(std::string_view key, uint64_t h, bool add) {
  if (!add) {
    if (tags_.empty()) return nullptr;
    const size_t mask = tags_.size() - 1;
    const uint32_t tag = tag_of(h);
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      if (tags_[i] == 0) return nullptr;
      if (tags_[i] == tag && keys_[i] == key) return &entries_[i];
    }
  }
  if (2 * (used_ + 1) > tags_.size()) grow();
  if (tags_.empty()) return nullptr;
  const size_t mask = tags_.size() - 1;
  const uint32_t tag = tag_of(h);
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    if (tags_[i] == 0) {
      if (!add) return nullptr;
      tags_[i] = tag;
      keys_[i] = key;
      ++used_;
      return &entries_[i];
    }
    if (tags_[i] == tag && keys_[i] == key) return &entries_[i];
  }
}

const GeneTable::Entry* GeneTable::find(std::string_view key) const {
  return const_cast<GeneTable*>(this)->find_or_add(key, hash_name(key), false);
}

GeneTable GeneTable::load(const std::string& path, const std::vector<std::string>* only) {
  GeneTable t;
  size_t size = 0;
  t.text_ = read_text(path, size);
  uint64_t lengths[4] = {};  // with `only`: bit k set if a name in use has k characters (255: more)
  // With `only`: a bit per value of 20 bits of the hashes of the names in use (128 KB; 27k names
  // set 2.6% of them: a name not in use is probed once in 40, was 1 in 3 with 16 bits)
  std::vector<uint64_t> seen(only ? (1 << 20) / 64 : 0);
  if (only) {
    // The names in use, version stripped, copied into a buffer the table owns (the keys view
    // them); the table's names are then only looked up, never added.
    size_t bytes = 0;
    for (const auto& n : *only) bytes += strip_version(n).size();
    auto names = std::make_shared<std::string>();
    names->reserve(bytes);
    std::vector<std::pair<size_t, size_t>> spans;
    spans.reserve(only->size());
    for (const auto& n : *only) {
      const std::string_view k = strip_version(n);
      spans.emplace_back(names->size(), k.size());
      names->append(k);
    }
    t.names_ = names;
    size_t cap = 16;
    while (2 * (spans.size() + 1) > cap) cap *= 2;
    t.rehash(cap);  // sized once: no rehashing as names are added, no smaller tables first
    t.in_use_.assign(spans.size(), -1);
    for (size_t i = 0; i < spans.size(); ++i) {
      const auto [at, len] = spans[i];
      if (len == 0) continue;
      const std::string_view k(names->data() + at, len);
      const uint64_t h = hash_name(k);
      t.in_use_[i] = static_cast<int32_t>(t.find_or_add(k, h, true) - t.entries_.data());
      const uint64_t bit = (h >> 40) & 0xfffff;
      seen[bit >> 6] |= uint64_t{1} << (bit & 63);
      lengths[std::min<size_t>(len, 255) / 64] |= uint64_t{1} << (std::min<size_t>(len, 255) % 64);
    }
  }
  const bool add = !only;
  // Looks a table name up. With `only`, two filters first: a name of a length that no name in
  // use has is not even hashed (kang's names are all 15-character Ensembl IDs: most symbols and
  // aliases go so), and one whose hash has 20 bits no name in use has is not probed.
  auto lookup = [&](std::string_view key) -> Entry* {
    const size_t len = std::min<size_t>(key.size(), 255);
    if (!add && !(lengths[len / 64] >> (len % 64) & 1)) return nullptr;
    const uint64_t h = hash_name(key);
    if (!add) {
      const uint64_t bit = (h >> 40) & 0xfffff;
      if (!(seen[bit >> 6] >> (bit & 63) & 1)) return nullptr;
    }
    return t.find_or_add(key, h, add);
  };
  // One pass over the text: the header line split plainly, then every tab and newline found 16
  // bytes at a time (for_each_separator; a byte loop over the 3.5 MB was most of the load), each
  // line's fields cut at them; each ID, symbol and alias hashed once and looked up; the first gene
  // (table order) to name a key keeps it.
  const char* p = t.text_.get();
  const char* const end = p + size;
  int64_t lineno = 1;
  int col_symbol = -1, col_ensembl = -1, col_aliases = -1, need = 0;
  {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', size));
    if (!nl) nl = end;
    std::string_view line(p, static_cast<size_t>(nl - p));
    p = nl + (nl < end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::vector<std::string_view> h;
    split_into(line, '\t', h);
    for (int i = 0; i < static_cast<int>(h.size()); ++i) {
      if (h[i] == "symbol") col_symbol = i;
      if (h[i] == "ensembl_ids") col_ensembl = i;
      if (h[i] == "aliases") col_aliases = i;
    }
    if (col_symbol < 0 || col_ensembl < 0)
      throw std::runtime_error(str(path, ":1: header needs columns 'symbol' and 'ensembl_ids'"));
    need = std::max({col_symbol, col_ensembl, col_aliases}) + 1;
  }
  auto each_part = [](std::string_view field, auto&& fn) {
    const char* a = field.data();
    const char* const e = a + field.size();
    for (const char* q = a;; ++q) {  // fields are short: a byte loop beats memchr calls
      if (q == e || *q == '|') {
        if (q > a) fn(std::string_view(a, static_cast<size_t>(q - a)));
        if (q == e) break;
        a = q + 1;
      }
    }
  };
  std::vector<std::string_view> f(need);
  int got = 0;
  const char* line_start = p;
  const char* field_start = p;
  auto end_line = [&](const char* q) {  // q: the line's '\n' (or the end of the text)
    ++lineno;
    if (got < need) {
      std::string_view last(field_start, static_cast<size_t>(q - field_start));
      if (!last.empty() && last.back() == '\r') last.remove_suffix(1);
      f[got++] = last;
    }
    std::string_view line(line_start, static_cast<size_t>(q - line_start));
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    line_start = field_start = q + 1;
    const int fields = got;
    got = 0;
    if (line.empty()) return;
    if (fields < need) {
      std::vector<std::string_view> all;
      split_into(line, '\t', all);
      throw std::runtime_error(str(path, ":", lineno, ": expected ", need, " tab-separated fields, got ", all.size()));
    }
    ++t.n_genes_;
    const std::string_view symbol = f[col_symbol];
    std::string_view canonical;  // the gene's first Ensembl ID (stripped), else its symbol
    each_part(f[col_ensembl], [&](std::string_view e) {
      const std::string_view id = strip_version(e);  // stored stripped: a view of the prefix
      if (canonical.empty()) canonical = id;
      if (Entry* x = lookup(id); x && !x->by_ensembl.data()) x->by_ensembl = canonical;
    });
    if (canonical.empty()) canonical = symbol;
    if (!symbol.empty())
      if (Entry* x = lookup(symbol); x && !x->by_symbol.data()) x->by_symbol = canonical;
    if (col_aliases >= 0)
      each_part(f[col_aliases], [&](std::string_view a) {
        if (Entry* x = lookup(a); x && !x->by_alias.data()) x->by_alias = canonical;
      });
  };
  for_each_separator(p, end, [&](const char* q) {
    if (*q == '\n') {
      end_line(q);
    } else if (got < need) {
      f[got++] = std::string_view(field_start, static_cast<size_t>(q - field_start));
      field_start = q + 1;
    } else {
      field_start = q + 1;  // a field past the ones used
    }
  });
  if (line_start < end) end_line(end);  // a last line without a newline
  if (t.n_genes_ == 0) throw std::runtime_error(str(path, ": the gene table has no genes"));
  return t;
}

std::optional<std::string_view> GeneTable::answer(std::string_view key, const Entry& e) const {
  if (is_ensembl(key) && e.by_ensembl.data()) return e.by_ensembl;
  if (e.by_symbol.data()) return e.by_symbol;
  if (e.by_alias.data()) return e.by_alias;
  return std::nullopt;
}

std::optional<std::string> GeneTable::canonical(std::string_view name) const {
  const std::string_view key = strip_version(name);
  const Entry* e = find(key);
  if (!e) return std::nullopt;
  const std::optional<std::string_view> a = answer(key, *e);
  if (!a) return std::nullopt;
  return std::string(*a);
}

std::optional<std::string_view> GeneTable::canonical_in_use(size_t i) const {
  if (i >= in_use_.size() || in_use_[i] < 0) return std::nullopt;
  return answer(keys_[in_use_[i]], entries_[in_use_[i]]);
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
