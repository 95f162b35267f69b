// Direct reads of a 1-D numeric dataset from the file with pread, bypassing HDF5, where its
// storage allows: contiguous, or chunked without filters; little-endian. Thread-safe (no HDF5
// calls after probe), which lets loader threads read in parallel.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace sctrain::io {

class RawDataset {
 public:
  // Where a direct read is impossible (compressed, big-endian, unusual type), nullopt:
  // the caller reads through HDF5 instead.
  static std::optional<RawDataset> probe(hid_t dset, std::shared_ptr<const int> fd);
  // Elements [start, start+count), converted to T.
  template <typename T>
  void read(int64_t start, int64_t count, T* out) const;

 private:
  enum class Kind { Float, Signed, Unsigned };
  std::shared_ptr<const int> fd_;
  Kind kind_ = Kind::Float;
  size_t elem_size_ = 4;
  int64_t n_ = 0;
  int64_t chunk_len_ = 0;            // 0: contiguous at base_
  haddr_t base_ = 0;
  std::vector<haddr_t> chunk_addr_;  // HADDR_UNDEF: never written (fill value 0)
};

}  // namespace sctrain::io
