// Counter-based randomness: splitmix64 mixing of keys. Same keys -> same numbers, on every
// machine and thread, so masks and shuffles are reproducible and resumable.
#pragma once
#include <cstdint>

namespace sctrain::data {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Hash of several keys.
inline uint64_t hash_keys(uint64_t a, uint64_t b) { return splitmix64(splitmix64(a) ^ (b + 0x632be59bd9b4e019ULL)); }
inline uint64_t hash_keys(uint64_t a, uint64_t b, uint64_t c) { return hash_keys(hash_keys(a, b), c); }
inline uint64_t hash_keys(uint64_t a, uint64_t b, uint64_t c, uint64_t d) { return hash_keys(hash_keys(a, b, c), d); }

// Uniform double in [0, 1) from 53 bits.
inline double unit_double(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

// A stream of numbers from one key: the counter goes through splitmix64.
struct HashStream {
  uint64_t key, counter = 0;
  explicit HashStream(uint64_t k) : key(k) {}
  uint64_t next() { return splitmix64(key + 0x9e3779b97f4a7c15ULL * ++counter); }
  // Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; bias < n / 2^64).
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
  double uniform() { return unit_double(next()); }
};

}  // namespace sctrain::data
