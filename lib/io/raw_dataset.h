// Direct reads of a 1-D numeric dataset from the file with pread, bypassing HDF5, where its
// storage allows: contiguous, or chunked, plain or compressed with deflate (gzip) or lzf;
// little-endian. No HDF5 call after probe, so threads read (and inflate) in parallel.
// Deflate is undone by libdeflate when the build found it (SCTRAIN_LIBDEFLATE), else zlib.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "io/serial_inflate.h"

namespace sctrain::io {

class RawDataset {
 public:
  // Where a direct read is impossible (other filters, big-endian, unusual type), nullopt:
  // the caller reads through HDF5 instead.
  // vlen_strings: a dataset of variable-length strings, read as its stored 16-byte references
  // (read_bytes; vlen_strings.h resolves them).
  static std::optional<RawDataset> probe(hid_t dset, std::shared_ptr<const int> fd, bool vlen_strings = false);
  // Ranges [start, start+count) of elements, converted to T, written one after another to out.
  // Compressed chunks the ranges need are inflated in parallel and kept in a bounded cache.
  template <typename T>
  void read(const std::vector<std::pair<int64_t, int64_t>>& ranges, T* out) const;
  // Elements [start, start+count) as stored (elem_size() bytes each), to out.
  void read_bytes(int64_t start, int64_t count, unsigned char* out) const;
  size_t elem_size() const { return elem_size_; }
  int64_t size() const { return n_; }
  bool compressed() const { return !filters_.empty(); }

  struct ChunkCache;
  using Chunk = std::shared_ptr<const std::vector<unsigned char>>;

 private:
  enum class Kind { Float, Signed, Unsigned, Bytes };
  void decode_chunk(int64_t c, unsigned char* dst) const;  // pread + inflate, chunk_len_ elements
  Chunk load_chunk(int64_t c) const;                       // decode_chunk through the cache

  std::shared_ptr<const int> fd_;
  Kind kind_ = Kind::Float;
  size_t elem_size_ = 4;
  int64_t n_ = 0;
  int64_t chunk_len_ = 0;              // 0: contiguous at base_
  haddr_t base_ = 0;
  std::vector<haddr_t> chunk_addr_;    // HADDR_UNDEF: never written (fill value 0)
  std::vector<hsize_t> chunk_bytes_;   // stored (compressed) size
  std::vector<unsigned> chunk_mask_;   // bit i set: filter i skipped for this chunk
  std::vector<int> filters_;           // pipeline order (H5Z_FILTER_DEFLATE or 32000)
  std::shared_ptr<ChunkCache> cache_;  // inflated chunks (compressed datasets)
};

}  // namespace sctrain::io
