#include "io/h5ad.h"

#include <algorithm>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <numeric>

#include "io/hdf5_util.h"
#include "io/lzf_filter.h"
#include "io/raw_dataset.h"

namespace sctrain::io {

using h5::Handle;

H5adError::H5adError(const std::string& file, const std::string& h5path, const std::string& problem)
    : std::runtime_error(file + (h5path.empty() ? "" : ": " + h5path) + ": " + problem),
      file_(file),
      h5path_(h5path) {}

const char* format_name(Format f) {
  switch (f) {
    case Format::Anndata08: return "anndata-0.8+";
    case Format::Anndata07: return "anndata-0.7";
    case Format::Legacy: return "anndata-legacy";
  }
  return "?";
}

const char* encoding_name(Encoding e) {
  switch (e) {
    case Encoding::Dense: return "array";
    case Encoding::Csr: return "csr_matrix";
    case Encoding::Csc: return "csc_matrix";
  }
  return "?";
}

const char* column_type_name(ColumnType t) {
  switch (t) {
    case ColumnType::String: return "string";
    case ColumnType::Numeric: return "numeric";
    case ColumnType::Boolean: return "boolean";
    case ColumnType::Categorical: return "categorical";
  }
  return "?";
}

namespace {

// HDF5 may be built without thread safety: every entry point holds this lock.
std::recursive_mutex& h5_mutex() {
  static std::recursive_mutex m;
  return m;
}
using Lock = std::lock_guard<std::recursive_mutex>;

constexpr size_t kChunkCacheBytes = 64ull << 20;  // per open dataset
constexpr int64_t kSlabEntries = 1 << 22;          // entries per read when scanning

std::string format_number(double v) {
  if (std::isnan(v)) return "nan";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace

// ---------------------------------------------------------------- Column / Dataframe

size_t Column::size() const {
  switch (type) {
    case ColumnType::String: return strings.size();
    case ColumnType::Numeric:
    case ColumnType::Boolean: return numbers.size();
    case ColumnType::Categorical: return codes.size();
  }
  return 0;
}

std::string Column::text(size_t i) const {
  if (!missing.empty() && missing[i]) return "";
  switch (type) {
    case ColumnType::String: return strings[i];
    case ColumnType::Numeric: return format_number(numbers[i]);
    case ColumnType::Boolean: return numbers[i] != 0 ? "True" : "False";
    case ColumnType::Categorical: return codes[i] < 0 ? "" : categories[codes[i]];
  }
  return "";
}

const Column* Dataframe::find(const std::string& name) const {
  for (const auto& c : columns)
    if (c.name == name) return &c;
  return nullptr;
}

// ---------------------------------------------------------------- Matrix

struct Matrix::Impl {
  std::shared_ptr<Handle> file;
  std::string file_path;
  Handle data, indices;   // sparse
  std::optional<RawDataset> raw_data, raw_indices;  // direct reads where storage allows
  std::vector<int64_t> indptr;
  Handle dense;           // dense

  [[noreturn]] void fail(const MatrixInfo& info, const std::string& problem) const {
    throw H5adError(file_path, info.h5path, problem);
  }
};

Matrix::Matrix(MatrixInfo info, std::unique_ptr<Impl> impl)
    : info_(std::move(info)), impl_(std::move(impl)) {}
Matrix::~Matrix() {
  if (impl_) {
    Lock lock(h5_mutex());
    impl_.reset();
  }
}
Matrix::Matrix(Matrix&&) noexcept = default;
Matrix& Matrix::operator=(Matrix&&) noexcept = default;

namespace {

// Consecutive rows [start, start+count).
struct Run {
  int64_t start, count;
};

std::vector<Run> runs_of(const std::vector<int64_t>& sorted_unique) {
  std::vector<Run> runs;
  for (int64_t r : sorted_unique) {
    if (!runs.empty() && runs.back().start + runs.back().count == r)
      ++runs.back().count;
    else
      runs.push_back({r, 1});
  }
  return runs;
}

// Checks every column index is in range and sorts the entries of rows a file stores unsorted.
void check_and_sort_rows(const MatrixInfo& info, const Matrix::Impl& m, CellRows& out) {
  const int32_t n_cols = static_cast<int32_t>(info.n_cols);
  for (int64_t r = 0; r < out.n_rows(); ++r) {
    int64_t b = out.indptr[r], e = out.indptr[r + 1];
    // One branch-free pass: in range (unsigned compare) and ascending. Integer flags, not bools,
    // so that the compiler vectorises it.
    const int32_t* ix = out.indices.data();
    int32_t out_of_range = b < e && static_cast<uint32_t>(ix[b]) >= static_cast<uint32_t>(n_cols), unsorted = 0;
    for (int64_t i = b + 1; i < e; ++i) {
      out_of_range |= static_cast<int32_t>(static_cast<uint32_t>(ix[i]) >= static_cast<uint32_t>(n_cols));
      unsorted |= static_cast<int32_t>(ix[i] < ix[i - 1]);
    }
    const bool in_range = out_of_range == 0, sorted = unsorted == 0;
    if (!in_range)
      for (int64_t i = b; i < e; ++i)
        if (out.indices[i] < 0 || out.indices[i] >= n_cols)
          m.fail(info, "indices out of range: column " + std::to_string(out.indices[i]) + " in a matrix of " +
                           std::to_string(info.n_cols) + " columns");
    if (sorted) continue;
    std::vector<std::pair<int32_t, float>> tmp;
    for (int64_t i = b; i < e; ++i) tmp.emplace_back(out.indices[i], out.values[i]);
    std::sort(tmp.begin(), tmp.end());
    for (int64_t i = b; i < e; ++i) {
      out.indices[i] = tmp[i - b].first;
      out.values[i] = tmp[i - b].second;
    }
  }
}

// Reads the rows of `runs` (sorted) from a CSR matrix, in run order.
CellRows read_csr_runs(const MatrixInfo& info, Matrix::Impl& m, const std::vector<Run>& runs) {
  CellRows out;
  out.n_cols = info.n_cols;
  std::vector<hsize_t> starts, counts;
  int64_t total = 0;
  for (const Run& run : runs) {
    int64_t lo = m.indptr[run.start], hi = m.indptr[run.start + run.count];
    starts.push_back(static_cast<hsize_t>(lo));
    counts.push_back(static_cast<hsize_t>(hi - lo));
    total += hi - lo;
    for (int64_t r = run.start; r < run.start + run.count; ++r)
      out.indptr.push_back(out.indptr.back() + (m.indptr[r + 1] - m.indptr[r]));
  }
  out.indices.resize(total);
  out.values.resize(total);
  try {
    Lock lock(h5_mutex());
    h5::read_ranges(m.indices.get(), starts, counts, out.indices.data());
    h5::read_ranges(m.data.get(), starts, counts, out.values.data());
  } catch (const std::exception& e) {
    m.fail(info, std::string("cannot read entries: ") + e.what());
  }
  check_and_sort_rows(info, m, out);
  return out;
}

// Direct CSR reads (RawDataset) in the requested order: no sorting of rows, no reordering
// copy; consecutive requested rows become one range.
CellRows read_csr_direct(const MatrixInfo& info, const Matrix::Impl& m, std::span<const int64_t> rows) {
  CellRows out;
  out.n_cols = info.n_cols;
  out.indptr.resize(rows.size() + 1);
  for (size_t i = 0; i < rows.size(); ++i)
    out.indptr[i + 1] = out.indptr[i] + (m.indptr[rows[i] + 1] - m.indptr[rows[i]]);
  out.indices.resize(out.indptr.back());
  out.values.resize(out.indptr.back());
  std::vector<std::pair<int64_t, int64_t>> ranges;  // in output order
  for (size_t i = 0; i < rows.size();) {
    size_t j = i;
    while (j + 1 < rows.size() && rows[j + 1] == rows[j] + 1) ++j;
    int64_t lo = m.indptr[rows[i]];
    ranges.emplace_back(lo, m.indptr[rows[j] + 1] - lo);
    i = j + 1;
  }
  try {
    m.raw_indices->read(ranges, out.indices.data());
    m.raw_data->read(ranges, out.values.data());
  } catch (const std::exception& e) {
    m.fail(info, std::string("cannot read entries: ") + e.what());
  }
  check_and_sort_rows(info, m, out);
  return out;
}

// Reads the rows of `runs` (sorted) from a dense matrix, dropping zeros.
CellRows read_dense_runs(const MatrixInfo& info, Matrix::Impl& m, const std::vector<Run>& runs) {
  CellRows out;
  out.n_cols = info.n_cols;
  const int64_t cols = info.n_cols;
  const int64_t rows_per_read = std::max<int64_t>(1, (16ll << 20) / std::max<int64_t>(1, cols));
  std::vector<float> buf;
  size_t i = 0;
  Run pending{0, 0};
  auto next_piece = [&](Run& piece) {  // splits runs into pieces of at most rows_per_read
    if (pending.count == 0) {
      if (i == runs.size()) return false;
      pending = runs[i++];
    }
    piece = {pending.start, std::min(pending.count, rows_per_read)};
    pending.start += piece.count;
    pending.count -= piece.count;
    return true;
  };
  Run piece;
  while (next_piece(piece)) {
    buf.resize(static_cast<size_t>(piece.count * cols));
    try {
      h5::read_row_ranges(m.dense.get(), {static_cast<hsize_t>(piece.start)},
                          {static_cast<hsize_t>(piece.count)}, static_cast<hsize_t>(cols), buf.data());
    } catch (const std::exception& e) {
      m.fail(info, std::string("cannot read rows: ") + e.what());
    }
    for (int64_t r = 0; r < piece.count; ++r) {
      const float* row = buf.data() + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        if (row[c] != 0.0f) {
          out.indices.push_back(static_cast<int32_t>(c));
          out.values.push_back(row[c]);
        }
      }
      out.indptr.push_back(static_cast<int64_t>(out.indices.size()));
    }
  }
  return out;
}

// Reads the rows `wanted` (sorted, unique) from a CSC matrix: one pass over all entries in slabs.
CellRows read_csc_rows(const MatrixInfo& info, Matrix::Impl& m, const std::vector<int64_t>& wanted) {
  std::vector<int32_t> slot(static_cast<size_t>(info.n_rows), -1);
  for (size_t i = 0; i < wanted.size(); ++i) slot[wanted[i]] = static_cast<int32_t>(i);
  std::vector<std::vector<std::pair<int32_t, float>>> rows(wanted.size());
  const int64_t nnz = m.indptr.back();
  int64_t col = 0;
  for (int64_t lo = 0; lo < nnz; lo += kSlabEntries) {
    int64_t n = std::min(kSlabEntries, nnz - lo);
    std::vector<int64_t> idx;
    std::vector<float> val;
    try {
      idx = h5::read_slice<int64_t>(m.indices.get(), lo, n);
      val = h5::read_slice<float>(m.data.get(), lo, n);
    } catch (const std::exception& e) {
      m.fail(info, std::string("cannot read entries: ") + e.what());
    }
    for (int64_t k = 0; k < n; ++k) {
      while (m.indptr[col + 1] <= lo + k) ++col;
      int64_t r = idx[k];
      if (r < 0 || r >= info.n_rows)
        m.fail(info, "indices out of range: row " + std::to_string(r) + " in a matrix of " +
                         std::to_string(info.n_rows) + " rows");
      if (slot[r] >= 0) rows[slot[r]].emplace_back(static_cast<int32_t>(col), val[k]);
    }
  }
  CellRows out;
  out.n_cols = info.n_cols;
  for (auto& row : rows) {
    std::sort(row.begin(), row.end());
    for (auto& [c, v] : row) {
      out.indices.push_back(c);
      out.values.push_back(v);
    }
    out.indptr.push_back(static_cast<int64_t>(out.indices.size()));
  }
  return out;
}

// Picks rows of `src` (in src order) into the order of `order` (indices into src rows).
CellRows reorder(const CellRows& src, const std::vector<int64_t>& order) {
  CellRows out;
  out.n_cols = src.n_cols;
  for (int64_t s : order) {
    int64_t b = src.indptr[s], e = src.indptr[s + 1];
    out.indices.insert(out.indices.end(), src.indices.begin() + b, src.indices.begin() + e);
    out.values.insert(out.values.end(), src.values.begin() + b, src.values.begin() + e);
    out.indptr.push_back(static_cast<int64_t>(out.indices.size()));
  }
  return out;
}

}  // namespace

CellRows Matrix::read_rows(int64_t begin, int64_t end) const {
  if (begin < 0 || end < begin || end > info_.n_rows)
    impl_->fail(info_, "rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                           ") out of range: the matrix has " + std::to_string(info_.n_rows) + " rows");
  std::vector<int64_t> rows(end - begin);
  std::iota(rows.begin(), rows.end(), begin);
  return read_rows(rows);
}

CellRows Matrix::read_rows(std::span<const int64_t> rows) const {
  for (int64_t r : rows)
    if (r < 0 || r >= info_.n_rows)
      impl_->fail(info_, "row " + std::to_string(r) + " out of range: the matrix has " +
                             std::to_string(info_.n_rows) + " rows");
  // CSR read directly (plain, gzip or lzf chunks): no HDF5 call, no lock; threads read in parallel.
  if (info_.encoding == Encoding::Csr && impl_->raw_data && impl_->raw_indices)
    return read_csr_direct(info_, *impl_, rows);
  std::vector<int64_t> unique(rows.begin(), rows.end());
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());

  CellRows sorted;
  switch (info_.encoding) {
    case Encoding::Csr: sorted = read_csr_runs(info_, *impl_, runs_of(unique)); break;
    case Encoding::Dense: {
      Lock lock(h5_mutex());
      sorted = read_dense_runs(info_, *impl_, runs_of(unique));
      break;
    }
    case Encoding::Csc: {
      Lock lock(h5_mutex());
      sorted = read_csc_rows(info_, *impl_, unique);
      break;
    }
  }
  if (std::equal(rows.begin(), rows.end(), unique.begin(), unique.end())) return sorted;
  std::vector<int64_t> order(rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    order[i] = std::lower_bound(unique.begin(), unique.end(), rows[i]) - unique.begin();
  return reorder(sorted, order);
}

MatrixStats Matrix::scan_stats() const {
  Lock lock(h5_mutex());
  MatrixStats s;
  s.cell_entries.assign(static_cast<size_t>(info_.n_rows), 0);
  bool any = false;
  auto add = [&](float v) {
    double d = v;
    s.sum += d;
    if (!any || d < s.min) s.min = d;
    if (!any || d > s.max) s.max = d;
    any = true;
    if (s.integer_valued && d != std::floor(d)) s.integer_valued = false;
  };
  if (info_.encoding == Encoding::Dense) {
    const int64_t rows_per_read = std::max<int64_t>(1, kSlabEntries / std::max<int64_t>(1, info_.n_cols));
    std::vector<float> buf;
    for (int64_t r0 = 0; r0 < info_.n_rows; r0 += rows_per_read) {
      int64_t n = std::min(rows_per_read, info_.n_rows - r0);
      buf.resize(static_cast<size_t>(n * info_.n_cols));
      try {
        h5::read_row_ranges(impl_->dense.get(), {static_cast<hsize_t>(r0)}, {static_cast<hsize_t>(n)},
                            static_cast<hsize_t>(info_.n_cols), buf.data());
      } catch (const std::exception& e) {
        impl_->fail(info_, std::string("cannot read rows: ") + e.what());
      }
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < info_.n_cols; ++c) {
          float v = buf[r * info_.n_cols + c];
          add(v);
          if (v != 0.0f) ++s.cell_entries[r0 + r];
        }
    }
  } else {
    const int64_t nnz = impl_->indptr.back();
    for (int64_t lo = 0; lo < nnz; lo += kSlabEntries) {
      int64_t n = std::min(kSlabEntries, nnz - lo);
      std::vector<float> val;
      try {
        val = h5::read_slice<float>(impl_->data.get(), lo, n);
      } catch (const std::exception& e) {
        impl_->fail(info_, std::string("cannot read data: ") + e.what());
      }
      for (float v : val) add(v);
      if (info_.encoding == Encoding::Csc) {
        auto idx = h5::read_slice<int64_t>(impl_->indices.get(), lo, n);
        for (int64_t r : idx) {
          if (r < 0 || r >= info_.n_rows)
            impl_->fail(info_, "indices out of range: row " + std::to_string(r));
          ++s.cell_entries[r];
        }
      }
    }
    if (info_.encoding == Encoding::Csr)
      for (int64_t r = 0; r < info_.n_rows; ++r) s.cell_entries[r] = impl_->indptr[r + 1] - impl_->indptr[r];
    // Implicit zeros count as values, as in anndata's X.min()/X.max().
    if (nnz < info_.n_rows * info_.n_cols) add(0.0f);
  }
  return s;
}

// ---------------------------------------------------------------- H5adFile

struct H5adFile::Impl {
  std::string path;
  std::shared_ptr<Handle> file;
  std::shared_ptr<const int> fd;  // for direct reads (RawDataset)
  Format format = Format::Anndata08;
  int64_t n_obs = 0, n_vars = 0;
  bool has_x = false;

  hid_t fid() const { return file->get(); }
  [[noreturn]] void fail(const std::string& h5path, const std::string& problem) const {
    throw H5adError(path, h5path, problem);
  }
  std::string raw_x_path() const {
    if (h5::exists(fid(), "/raw/X")) return "/raw/X";
    if (h5::exists(fid(), "/raw.X")) return "/raw.X";
    return "";
  }
  std::string matrix_path(const std::string& name) const {
    if (name == "X") return "/X";
    if (name == "raw/X") return raw_x_path();
    if (name.rfind("layers/", 0) == 0 && name.size() > 7) return "/" + name;
    return "";
  }
  MatrixInfo describe(const std::string& name, const std::string& h5path) const;
  Dataframe read_dataframe(const std::string& h5path) const;
  Column read_column(hid_t group, const std::string& group_path, const std::string& name) const;
  Dataframe read_compound_dataframe(const std::string& h5path) const;
};

H5adFile::H5adFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
H5adFile::~H5adFile() {
  if (impl_) {
    Lock lock(h5_mutex());
    impl_.reset();
  }
}
H5adFile::H5adFile(H5adFile&&) noexcept = default;
H5adFile& H5adFile::operator=(H5adFile&&) noexcept = default;

const std::string& H5adFile::path() const { return impl_->path; }
Format H5adFile::format() const { return impl_->format; }
int64_t H5adFile::n_obs() const { return impl_->n_obs; }
int64_t H5adFile::n_vars() const { return impl_->n_vars; }

MatrixInfo H5adFile::Impl::describe(const std::string& name, const std::string& h5path) const {
  MatrixInfo info;
  info.name = name;
  info.h5path = h5path;
  hid_t f = fid();
  if (h5::is_dataset(f, h5path)) {
    Handle d = h5::open_dataset(f, h5path);
    auto enc = h5::attr_string(d.get(), "encoding-type");
    if (enc && *enc != "array") fail(h5path, "unknown encoding '" + *enc + "' for a matrix dataset");
    auto dims = h5::shape(d.get());
    if (dims.size() != 2) fail(h5path, "expected a 2-D matrix, found " + std::to_string(dims.size()) + "-D");
    Handle t(H5Dget_type(d.get()));
    info.encoding = Encoding::Dense;
    info.dtype = h5::dtype_name(t.get());
    info.n_rows = static_cast<int64_t>(dims[0]);
    info.n_cols = static_cast<int64_t>(dims[1]);
    if (info.dtype == "str" || info.dtype == "compound" || info.dtype == "unknown")
      fail(h5path, "matrix of non-numeric dtype " + info.dtype);
    return info;
  }
  if (!h5::is_group(f, h5path)) fail(h5path, "missing");
  Handle g = h5::open_group(f, h5path);
  std::string enc = h5::attr_string(g.get(), "encoding-type").value_or("");
  std::vector<int64_t> shape = h5::attr_ints(g.get(), "shape");
  if (enc.empty()) {  // anndata <= 0.6: h5sparse
    std::string fmt = h5::attr_string(g.get(), "h5sparse_format").value_or("");
    if (fmt == "csr") enc = "csr_matrix";
    else if (fmt == "csc") enc = "csc_matrix";
    else if (!fmt.empty()) fail(h5path, "unknown h5sparse_format '" + fmt + "'");
    shape = h5::attr_ints(g.get(), "h5sparse_shape");
  }
  if (enc == "csr_matrix") info.encoding = Encoding::Csr;
  else if (enc == "csc_matrix") info.encoding = Encoding::Csc;
  else if (enc.empty()) fail(h5path, "group without encoding-type (not a matrix)");
  else fail(h5path, "unknown encoding '" + enc + "'");
  if (shape.size() != 2 || shape[0] < 0 || shape[1] < 0) fail(h5path, "sparse matrix without a valid 'shape' attribute");
  info.n_rows = shape[0];
  info.n_cols = shape[1];
  for (const char* part : {"data", "indices", "indptr"})
    if (!h5::is_dataset(g.get(), part)) fail(h5path + "/" + part, "missing (sparse matrix needs data, indices, indptr)");
  Handle data = h5::open_dataset(g.get(), "data");
  Handle t(H5Dget_type(data.get()));
  info.dtype = h5::dtype_name(t.get());
  info.nnz = static_cast<int64_t>(h5::shape(data.get()).at(0));
  return info;
}

H5adFile H5adFile::open(const std::string& path) {
  Lock lock(h5_mutex());
  h5::quiet_errors();
  register_lzf_filter();
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) impl->fail("", "no such file");
  if (std::filesystem::is_directory(path, ec)) impl->fail("", "is a directory, not an .h5ad file");
  htri_t is_h5 = H5Fis_hdf5(path.c_str());
  if (is_h5 == 0) impl->fail("", "not an HDF5 file (no HDF5 signature): is it really .h5ad?");
  hid_t fid = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (fid < 0) {
    std::string detail = h5::last_error();
    impl->fail("", "cannot open: truncated or corrupt HDF5 file" + (detail.empty() ? "" : " (" + detail + ")"));
  }
  impl->file = std::make_shared<Handle>(fid);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) impl->fail("", "cannot open for reading");
  impl->fd = std::shared_ptr<const int>(new int(fd), [](const int* p) {
    ::close(*p);
    delete p;
  });

  hid_t f = impl->fid();
  bool has_obs = h5::exists(f, "/obs");
  bool x_exists = h5::exists(f, "/X");
  if (!x_exists && !has_obs) impl->fail("/X", "missing X (and no obs): not an AnnData file");
  if (!x_exists) impl->fail("/X", "missing X: the file has no expression matrix at /X");

  Handle root = h5::open_group(f, "/");
  if (h5::attr_string(root.get(), "encoding-type").value_or("") == "anndata")
    impl->format = Format::Anndata08;
  else if (h5::is_group(f, "/obs"))
    impl->format = Format::Anndata07;
  else
    impl->format = Format::Legacy;

  // X may be encoded as null (anndata 0.12 writes an empty X so).
  std::string x_enc;
  if (h5::is_group(f, "/X")) {
    Handle g = h5::open_group(f, "/X");
    x_enc = h5::attr_string(g.get(), "encoding-type").value_or("");
  } else {
    Handle d = h5::open_dataset(f, "/X");
    x_enc = h5::attr_string(d.get(), "encoding-type").value_or("");
  }
  H5adFile out(std::move(impl));
  Impl& im = *out.impl_;
  if (x_enc == "null") {
    im.has_x = false;
    im.n_obs = static_cast<int64_t>(out.obs_names().size());
    im.n_vars = static_cast<int64_t>(out.var_names("X").size());
  } else {
    MatrixInfo x = im.describe("X", "/X");
    im.has_x = true;
    im.n_obs = x.n_rows;
    im.n_vars = x.n_cols;
  }
  return out;
}

std::vector<std::string> H5adFile::matrix_names() const {
  Lock lock(h5_mutex());
  std::vector<std::string> names;
  if (impl_->has_x) names.push_back("X");
  if (!impl_->raw_x_path().empty()) names.push_back("raw/X");
  if (Handle layers = h5::open_group(impl_->fid(), "/layers"))
    for (const auto& n : h5::child_names(layers.get())) names.push_back("layers/" + n);
  return names;
}

bool H5adFile::has_matrix(const std::string& name) const {
  auto names = matrix_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

Matrix H5adFile::matrix(const std::string& name, bool direct_reads) const {
  Lock lock(h5_mutex());
  std::string h5path = impl_->matrix_path(name);
  if (h5path.empty() || !h5::exists(impl_->fid(), h5path) || (name == "X" && !impl_->has_x)) {
    std::string have;
    for (const auto& n : matrix_names()) have += (have.empty() ? "" : ", ") + n;
    impl_->fail(h5path.empty() ? name : h5path,
                "no matrix '" + name + "' in this file (matrices present: " + (have.empty() ? "none" : have) + ")");
  }
  MatrixInfo info = impl_->describe(name, h5path);
  auto m = std::make_unique<Matrix::Impl>();
  m->file = impl_->file;
  m->file_path = impl_->path;
  hid_t f = impl_->fid();
  if (info.encoding == Encoding::Dense) {
    m->dense = h5::open_dataset(f, h5path, kChunkCacheBytes);
  } else {
    m->data = h5::open_dataset(f, h5path + "/data", kChunkCacheBytes);
    m->indices = h5::open_dataset(f, h5path + "/indices", kChunkCacheBytes);
    if (direct_reads) {
      m->raw_data = RawDataset::probe(m->data.get(), impl_->fd);
      m->raw_indices = RawDataset::probe(m->indices.get(), impl_->fd);
    }
    Handle indptr = h5::open_dataset(f, h5path + "/indptr");
    try {
      m->indptr = h5::read_all<int64_t>(indptr.get());
    } catch (const std::exception& e) {
      impl_->fail(h5path + "/indptr", std::string("cannot read: ") + e.what());
    }
    int64_t n_major = info.encoding == Encoding::Csr ? info.n_rows : info.n_cols;
    int64_t n_idx = static_cast<int64_t>(h5::shape(m->indices.get()).at(0));
    if (static_cast<int64_t>(m->indptr.size()) != n_major + 1)
      impl_->fail(h5path + "/indptr", "indptr inconsistent with shape: " + std::to_string(m->indptr.size()) +
                                          " entries for " + std::to_string(n_major) +
                                          (info.encoding == Encoding::Csr ? " rows" : " columns") + " (expected " +
                                          std::to_string(n_major + 1) + ")");
    if (n_idx != *info.nnz)
      impl_->fail(h5path + "/indices", "has " + std::to_string(n_idx) + " entries but data has " +
                                           std::to_string(*info.nnz));
    if (m->indptr.front() != 0)
      impl_->fail(h5path + "/indptr", "indptr inconsistent: starts at " + std::to_string(m->indptr.front()) + ", not 0");
    for (size_t i = 1; i < m->indptr.size(); ++i)
      if (m->indptr[i] < m->indptr[i - 1])
        impl_->fail(h5path + "/indptr", "indptr inconsistent: decreases at position " + std::to_string(i));
    if (m->indptr.back() != *info.nnz)
      impl_->fail(h5path + "/indptr", "indptr inconsistent with data: ends at " + std::to_string(m->indptr.back()) +
                                          " but data has " + std::to_string(*info.nnz) + " entries");
  }
  return Matrix(std::move(info), std::move(m));
}

// ---------------------------------------------------------------- dataframes

namespace {

// Any 1-D dataset as text (index of numbers, strings).
std::vector<std::string> dataset_as_text(hid_t d) {
  Handle t(H5Dget_type(d));
  if (H5Tget_class(t.get()) == H5T_STRING) return h5::read_strings(d);
  auto nums = h5::read_all<double>(d);
  std::vector<std::string> out;
  out.reserve(nums.size());
  for (double v : nums) out.push_back(format_number(v));
  return out;
}

}  // namespace

Column H5adFile::Impl::read_column(hid_t group, const std::string& group_path, const std::string& name) const {
  const std::string p = group_path + "/" + name;
  Column col;
  col.name = name;
  try {
    if (h5::is_group(group, name)) {
      Handle g = h5::open_group(group, name);
      std::string enc = h5::attr_string(g.get(), "encoding-type").value_or("");
      if (enc == "categorical") {
        Handle codes = h5::open_dataset(g.get(), "codes");
        Handle cats = h5::open_dataset(g.get(), "categories");
        if (!codes || !cats) fail(p, "categorical without codes or categories");
        col.type = ColumnType::Categorical;
        Handle t(H5Dget_type(codes.get()));
        col.dtype = h5::dtype_name(t.get());
        col.codes = h5::read_all<int32_t>(codes.get());
        col.categories = dataset_as_text(cats.get());
        col.ordered = h5::attr_int(g.get(), "ordered").value_or(0) != 0;
      } else if (enc == "nullable-integer" || enc == "nullable-boolean" || enc == "nullable-string-array") {
        Handle values = h5::open_dataset(g.get(), "values");
        Handle mask = h5::open_dataset(g.get(), "mask");
        if (!values || !mask) fail(p, enc + " without values or mask");
        Handle t(H5Dget_type(values.get()));
        col.dtype = h5::dtype_name(t.get());
        if (enc == "nullable-string-array") {
          col.type = ColumnType::String;
          col.strings = h5::read_strings(values.get());
        } else {
          col.type = enc == "nullable-integer" ? ColumnType::Numeric : ColumnType::Boolean;
          col.numbers = h5::read_all<double>(values.get());
        }
        col.missing = h5::read_all<uint8_t>(mask.get());
      } else {
        fail(p, "unknown encoding '" + enc + "' for a dataframe column");
      }
    } else if (h5::is_dataset(group, name)) {
      Handle d = h5::open_dataset(group, name);
      Handle t(H5Dget_type(d.get()));
      col.dtype = h5::dtype_name(t.get());
      H5T_class_t cls = H5Tget_class(t.get());
      if (Handle cats = h5::attr_deref(d.get(), "categories")) {  // anndata 0.7
        col.type = ColumnType::Categorical;
        col.codes = h5::read_all<int32_t>(d.get());
        col.categories = dataset_as_text(cats.get());
        col.ordered = h5::attr_int(cats.get(), "ordered").value_or(0) != 0;  // 0.7 keeps it there
      } else if (cls == H5T_STRING) {
        col.type = ColumnType::String;
        col.strings = h5::read_strings(d.get());
      } else if (cls == H5T_ENUM) {
        col.type = ColumnType::Boolean;
        col.numbers = h5::read_all<double>(d.get());
      } else if (cls == H5T_INTEGER || cls == H5T_FLOAT) {
        col.type = ColumnType::Numeric;
        col.numbers = h5::read_all<double>(d.get());
      } else {
        fail(p, "unsupported column dtype " + col.dtype);
      }
    } else {
      fail(p, "column listed in column-order is missing");
    }
  } catch (const H5adError&) {
    throw;
  } catch (const std::exception& e) {
    fail(p, e.what());
  }
  if (col.type == ColumnType::Categorical)
    for (int32_t c : col.codes)
      if (c < -1 || c >= static_cast<int32_t>(col.categories.size()))
        fail(p, "categorical code " + std::to_string(c) + " out of range (" +
                    std::to_string(col.categories.size()) + " categories)");
  return col;
}

Dataframe H5adFile::Impl::read_compound_dataframe(const std::string& h5path) const {
  Dataframe df;
  Handle d = h5::open_dataset(fid(), h5path);
  try {
    for (const auto& field : h5::compound_fields(d.get())) {
      if (field.name == "index") {
        df.index_name = "index";
        df.index = h5::read_field_strings(d.get(), "index");
        continue;
      }
      Column col;
      col.name = field.name;
      col.dtype = field.dtype;
      if (field.cls == H5T_STRING) {
        col.type = ColumnType::String;
        col.strings = h5::read_field_strings(d.get(), field.name);
      } else if (field.cls == H5T_ENUM) {
        col.type = ColumnType::Boolean;
        col.numbers = h5::read_field_numbers(d.get(), field.name);
      } else if (field.cls == H5T_INTEGER || field.cls == H5T_FLOAT) {
        std::string cats_path = "/uns/" + field.name + "_categories";
        if (field.cls == H5T_INTEGER && h5::is_dataset(fid(), cats_path)) {
          col.type = ColumnType::Categorical;
          for (double v : h5::read_field_numbers(d.get(), field.name)) col.codes.push_back(static_cast<int32_t>(v));
          Handle cats = h5::open_dataset(fid(), cats_path);
          col.categories = dataset_as_text(cats.get());
        } else {
          col.type = ColumnType::Numeric;
          col.numbers = h5::read_field_numbers(d.get(), field.name);
        }
      } else {
        continue;  // array-valued fields (obsm-like) are not columns
      }
      df.columns.push_back(std::move(col));
    }
  } catch (const H5adError&) {
    throw;
  } catch (const std::exception& e) {
    fail(h5path, e.what());
  }
  return df;
}

Dataframe H5adFile::Impl::read_dataframe(const std::string& h5path) const {
  hid_t f = fid();
  if (h5::is_dataset(f, h5path)) return read_compound_dataframe(h5path);
  Handle g = h5::open_group(f, h5path);
  if (!g) fail(h5path, "missing");
  Dataframe df;
  df.index_name = h5::attr_string(g.get(), "_index").value_or("_index");
  if (!h5::exists(g.get(), df.index_name)) fail(h5path + "/" + df.index_name, "index named by _index is missing");
  try {
    if (h5::is_group(g.get(), df.index_name)) {  // nullable-string-array index
      Column idx = read_column(g.get(), h5path, df.index_name);
      for (size_t i = 0; i < idx.size(); ++i) df.index.push_back(idx.text(i));
    } else {
      Handle d = h5::open_dataset(g.get(), df.index_name);
      df.index = dataset_as_text(d.get());
    }
  } catch (const H5adError&) {
    throw;
  } catch (const std::exception& e) {
    fail(h5path + "/" + df.index_name, e.what());
  }
  for (const auto& name : h5::attr_strings(g.get(), "column-order")) {
    df.columns.push_back(read_column(g.get(), h5path, name));
    if (df.columns.back().size() != df.index.size())
      fail(h5path + "/" + name, "has " + std::to_string(df.columns.back().size()) + " rows but the index has " +
                                    std::to_string(df.index.size()));
  }
  return df;
}

Dataframe H5adFile::obs() const {
  Lock lock(h5_mutex());
  return impl_->read_dataframe("/obs");
}

Dataframe H5adFile::var() const {
  Lock lock(h5_mutex());
  return impl_->read_dataframe("/var");
}

Dataframe H5adFile::var_of(const std::string& matrix_name) const {
  Lock lock(h5_mutex());
  if (matrix_name != "raw/X") return impl_->read_dataframe("/var");
  if (h5::exists(impl_->fid(), "/raw/var")) return impl_->read_dataframe("/raw/var");
  if (h5::exists(impl_->fid(), "/raw.var")) return impl_->read_dataframe("/raw.var");
  impl_->fail("/raw/var", "raw/X has no var table");
}

std::vector<std::string> H5adFile::obs_names() const { return obs().index; }
std::vector<std::string> H5adFile::var_names(const std::string& matrix_name) const {
  return var_of(matrix_name).index;
}

}  // namespace sctrain::io
