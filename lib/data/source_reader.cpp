#include "data/source_reader.h"

#include <future>
#include <stdexcept>

#include "util/log.h"

namespace sctrain::data {

OpenedMatrix open_matrix(const std::string& path, const std::string& matrix_name) {
  io::H5adFile file = io::H5adFile::open(path);
  if (!file.has_matrix(matrix_name)) {
    std::string have;
    for (const auto& m : file.matrix_names()) have += (have.empty() ? "" : ", ") + m;
    throw std::runtime_error(str(path, ": no matrix '", matrix_name, "' (the file has: ", have,
                                 "); choose one with FILE:MATRIX or --matrix"));
  }
  io::Matrix m = file.matrix(matrix_name);
  return OpenedMatrix{std::move(file), std::move(m)};
}

void for_each_chunk(const io::Matrix& matrix, int64_t chunk_rows,
                    const std::function<void(const io::CellRows&, int64_t)>& fn) {
  const int64_t n = matrix.info().n_rows;
  if (n == 0) return;
  auto read = [&matrix, n, chunk_rows](int64_t begin) { return matrix.read_rows(begin, std::min(n, begin + chunk_rows)); };
  std::future<io::CellRows> ahead = std::async(std::launch::async, read, int64_t{0});
  for (int64_t begin = 0; begin < n; begin += chunk_rows) {
    io::CellRows rows = ahead.get();
    if (begin + chunk_rows < n) ahead = std::async(std::launch::async, read, begin + chunk_rows);
    try {
      fn(rows, begin);
    } catch (...) {
      if (ahead.valid()) ahead.wait();  // never leave a read running on a matrix about to close
      throw;
    }
  }
}

void append_rows(io::CellRows& dst, const io::CellRows& src) {
  if (dst.n_rows() == 0 && dst.indices.empty()) dst.n_cols = src.n_cols;
  const int64_t base = dst.indptr.back();
  dst.indices.insert(dst.indices.end(), src.indices.begin(), src.indices.end());
  dst.values.insert(dst.values.end(), src.values.begin(), src.values.end());
  for (int64_t r = 1; r < static_cast<int64_t>(src.indptr.size()); ++r) dst.indptr.push_back(base + src.indptr[r]);
}

}  // namespace sctrain::data
