// Where each chunk of a chunked 1-D dataset lies in the file, for direct reads (RawDataset).
//
// HDF5 1.10 answers one chunk per call (H5Dget_chunk_info_by_coord, ~4 us each: 4.5 ms of the
// 7 ms it takes to open a 8.7k-cell gzip file, and seconds for an atlas). h5py writes its
// datasets with a version-1 B-tree of chunks (data layout message version 3), which
// chunk_index_from_btree reads straight from the file: a few preads per 64 chunks.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace sctrain::io {

struct ChunkIndex {
  explicit ChunkIndex(int64_t n_chunks)  // every chunk unwritten
      : addr(static_cast<size_t>(n_chunks), HADDR_UNDEF), bytes(static_cast<size_t>(n_chunks), 0),
        mask(static_cast<size_t>(n_chunks), 0) {}
  std::vector<haddr_t> addr;   // HADDR_UNDEF: never written (reads as the fill value 0)
  std::vector<hsize_t> bytes;  // stored (filtered) size
  std::vector<unsigned> mask;  // bit i set: filter i skipped for this chunk
};

// Whether the file of obj holds what the direct parsers (chunk_index, vlen_strings) assume:
// 8-byte addresses and lengths, and no user block (file offsets = HDF5 addresses).
bool plain_file_addresses(hid_t obj);

// Through HDF5, one call per chunk. nullopt on an HDF5 error.
std::optional<ChunkIndex> chunk_index_by_api(hid_t dset, int64_t chunk_len, int64_t n_chunks);

// From the dataset's version-1 B-tree, read with pread on fd. nullopt where the dataset is
// stored another way (a newer chunk index, a version-2 object header, a user block, addresses
// other than 8 bytes) or where anything read disagrees with what HDF5 reports.
std::optional<ChunkIndex> chunk_index_from_btree(hid_t dset, int fd, int64_t chunk_len, int64_t n_chunks);

// from_btree where it applies, else by_api.
std::optional<ChunkIndex> read_chunk_index(hid_t dset, int fd, int64_t chunk_len, int64_t n_chunks);

}  // namespace sctrain::io
