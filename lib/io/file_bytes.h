// Bytes of an HDF5 file read by address, for the reads that bypass HDF5 (raw_dataset,
// chunk_index, vlen_strings).
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>

namespace sctrain::io {

// n bytes at byte `at` into out; false on a short read (a truncated file).
inline bool pread_exact(int fd, uint64_t at, size_t n, unsigned char* out) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, out, n, static_cast<off_t>(at));
    if (got <= 0) return false;
    out += got;
    n -= static_cast<size_t>(got);
    at += static_cast<uint64_t>(got);
  }
  return true;
}

// A little-endian unsigned integer of n <= 8 bytes (the file format's byte order).
inline uint64_t read_le(const unsigned char* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace sctrain::io
