// Reads a source's matrix in chunks of rows, the next chunk read ahead on another thread
// while the caller works on the current one (HDF5 calls stay one at a time).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "io/h5ad.h"

namespace sctrain::data {

// Opens `path`, checks that it holds `matrix` (throws naming the file, the matrix and
// the matrices it has), returns it with the file kept open inside.
struct OpenedMatrix {
  io::H5adFile file;
  io::Matrix matrix;
};
OpenedMatrix open_matrix(const std::string& path, const std::string& matrix_name);

// Calls fn(rows, first_row) for consecutive chunks covering rows [0, n_rows).
void for_each_chunk(const io::Matrix& matrix, int64_t chunk_rows,
                    const std::function<void(const io::CellRows&, int64_t)>& fn);

// Appends src's rows to dst (same n_cols).
void append_rows(io::CellRows& dst, const io::CellRows& src);

}  // namespace sctrain::data
