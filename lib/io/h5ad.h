// Reader for AnnData .h5ad files over the HDF5 C library.
//
// Reads every layout in use: anndata >= 0.8 (encoding-type attributes), 0.7.x
// (`__categories` references) and <= 0.6 (compound obs/var, h5sparse, `raw.X`).
// Matrices are read out of core: a request for cells reads only what they need.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sctrain::io {

// Every failure names the file, the HDF5 path and the problem.
class H5adError : public std::runtime_error {
 public:
  H5adError(const std::string& file, const std::string& h5path, const std::string& problem);
  const std::string& file() const { return file_; }
  const std::string& h5path() const { return h5path_; }

 private:
  std::string file_, h5path_;
};

enum class Format { Anndata08, Anndata07, Legacy };
const char* format_name(Format f);  // "anndata-0.8+", "anndata-0.7", "anndata-legacy"

enum class Encoding { Dense, Csr, Csc };
const char* encoding_name(Encoding e);  // "array", "csr_matrix", "csc_matrix"

struct MatrixInfo {
  std::string name;             // "X", "raw/X", "layers/counts"
  std::string h5path;           // where it lives in the file ("/raw.X" in legacy files)
  Encoding encoding = Encoding::Dense;
  std::string dtype;            // numpy-style: "float32", "int64", "bool", ...
  int64_t n_rows = 0, n_cols = 0;
  std::optional<int64_t> nnz;   // stored entries of a sparse matrix
};

// A std::allocator whose resize() leaves new elements uninitialised: the reader sizes the entry
// arrays and then overwrites every element, so zero-filling them first (tens of MB for a
// sequential read) would be a wasted pass.
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) ::new (static_cast<void*>(p)) U;
    else ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// Cells in CSR form: row r holds entries [indptr[r], indptr[r+1]).
// Dense matrices are returned with their zeros dropped.
struct CellRows {
  int64_t n_cols = 0;
  std::vector<int64_t> indptr{0};
  std::vector<int32_t, DefaultInitAllocator<int32_t>> indices;  // column (gene) of each entry, ascending within a row
  std::vector<float, DefaultInitAllocator<float>> values;
  int64_t n_rows() const { return static_cast<int64_t>(indptr.size()) - 1; }
  int64_t row_nnz(int64_t r) const { return indptr[r + 1] - indptr[r]; }
};

// One pass over a matrix (inspect --stats).
struct MatrixStats {
  double sum = 0, min = 0, max = 0;   // over all values; a sparse matrix's implicit zeros count
  bool integer_valued = true;         // every value is a whole number (counts?)
  std::vector<int64_t> cell_entries;  // stored entries per cell (dense: non-zeros)
};

class Matrix {
 public:
  const MatrixInfo& info() const { return info_; }
  // Rows [begin, end). Reads only those rows (CSC: see read_rows below).
  CellRows read_rows(int64_t begin, int64_t end) const;
  // Any rows, in the order given (duplicates allowed).
  // Sparse CSR and dense read only the requested rows. A CSC matrix stores
  // cells across all columns, so any request reads the whole of indices/data
  // once, in slabs (memory bounded by the slab, time by the matrix size).
  CellRows read_rows(std::span<const int64_t> rows) const;
  // Scans the whole matrix once, in slabs of bounded size.
  MatrixStats scan_stats() const;
  ~Matrix();
  Matrix(Matrix&&) noexcept;
  Matrix& operator=(Matrix&&) noexcept;
  struct Impl;  // opaque

 private:
  friend class H5adFile;
  Matrix(MatrixInfo info, std::unique_ptr<Impl> impl);
  MatrixInfo info_;
  std::unique_ptr<Impl> impl_;
};

enum class ColumnType { String, Numeric, Boolean, Categorical };
const char* column_type_name(ColumnType t);  // "string", "numeric", "boolean", "categorical"

// One obs/var column, fully read (tables are small next to matrices).
struct Column {
  std::string name;
  ColumnType type = ColumnType::String;
  std::string dtype;                     // storage dtype of values or codes
  std::vector<std::string> strings;      // String
  std::vector<double> numbers;           // Numeric, Boolean (0/1)
  std::vector<int32_t> codes;            // Categorical, -1 = missing
  std::vector<std::string> categories;   // Categorical
  bool ordered = false;                  // Categorical
  std::vector<uint8_t> missing;          // nullable types: 1 = missing (empty if none)
  size_t size() const;
  // Value of row i as text ("" for missing), whatever the type.
  std::string text(size_t i) const;
};

struct Dataframe {
  std::string index_name;           // what `_index` names
  std::vector<std::string> index;   // obs_names / var_names
  std::vector<Column> columns;      // in column-order
  const Column* find(const std::string& name) const;
};

class H5adFile {
 public:
  // Throws H5adError when the file is missing, not HDF5, truncated, or has no X.
  static H5adFile open(const std::string& path);
  ~H5adFile();
  H5adFile(H5adFile&&) noexcept;
  H5adFile& operator=(H5adFile&&) noexcept;

  const std::string& path() const;
  Format format() const;
  int64_t n_obs() const;
  int64_t n_vars() const;

  // "X", then "raw/X" if present, then "layers/<name>" in file order.
  std::vector<std::string> matrix_names() const;
  bool has_matrix(const std::string& name) const;
  // Validates the matrix (shape, indptr); throws H5adError naming the problem.
  // direct_reads: read CSR entries with pread (and our own gzip/lzf inflate, in parallel) where
  // the storage allows, else through HDF5; false forces HDF5 (tests compare the two).
  Matrix matrix(const std::string& name, bool direct_reads = true) const;

  Dataframe obs() const;
  Dataframe var() const;
  // Genes of a matrix: var for X and layers, raw's var for raw/X.
  Dataframe var_of(const std::string& matrix_name) const;
  std::vector<std::string> obs_names() const;
  std::vector<std::string> var_names(const std::string& matrix_name = "X") const;

 private:
  struct Impl;
  explicit H5adFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sctrain::io
