// Hash of a gene name for the open-addressing tables of the gene table and the vocabulary.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>

namespace sctrain::data {

// 8-byte words mixed one by one, the tail as one more word, then a final mix.
inline uint64_t hash_name(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 31;
  }
  uint64_t w = 0;
  for (size_t k = 0; i + k < s.size(); ++k) w |= static_cast<uint64_t>(static_cast<unsigned char>(s[i + k])) << (8 * k);
  h = (h ^ w) * 0x94D049BB133111EBULL;
  return h ^ (h >> 29);
}

}  // namespace sctrain::data
