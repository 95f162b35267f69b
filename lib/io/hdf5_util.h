// Thin RAII and typed-read helpers over the HDF5 C API (used only inside lib/io).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sctrain::io::h5 {

// Owns an HDF5 identifier and closes it with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) { reset(); id_ = o.id_; o.id_ = -1; }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  explicit operator bool() const { return valid(); }
  void reset();

 private:
  hid_t id_ = -1;
};

// Silences HDF5's own error printing (we report errors ourselves). Call once.
void quiet_errors();
// Innermost HDF5 error message of the current stack ("" if none).
std::string last_error();

bool exists(hid_t loc, const std::string& path);   // link exists and resolves
bool is_group(hid_t loc, const std::string& path);
bool is_dataset(hid_t loc, const std::string& path);
Handle open_group(hid_t loc, const std::string& path);    // invalid handle if absent
Handle open_dataset(hid_t loc, const std::string& path, size_t cache_bytes = 0);
std::vector<std::string> child_names(hid_t group);         // in creation/name order

// Attributes.
bool has_attr(hid_t obj, const std::string& name);
std::optional<std::string> attr_string(hid_t obj, const std::string& name);
std::vector<std::string> attr_strings(hid_t obj, const std::string& name);  // array or scalar
std::vector<int64_t> attr_ints(hid_t obj, const std::string& name);
std::optional<int64_t> attr_int(hid_t obj, const std::string& name);  // scalar, bool or enum too
// Object reference attribute (anndata 0.7 categories): the referenced dataset, opened.
Handle attr_deref(hid_t obj, const std::string& name);

// Datasets.
std::vector<hsize_t> shape(hid_t dset);
std::string dtype_name(hid_t dtype);  // numpy-style name: "float32", "int64", "bool", "str", ...
// Reads a 1-D slice [begin, begin+count) converted to T (any numeric or enum-bool source type).
template <typename T>
std::vector<T> read_slice(hid_t dset, hsize_t begin, hsize_t count);
template <typename T>
std::vector<T> read_all(hid_t dset);
// Reads the union of 1-D ranges [starts[i], starts[i]+counts[i]) in one call, concatenated.
template <typename T>
void read_ranges(hid_t dset, const std::vector<hsize_t>& starts, const std::vector<hsize_t>& counts,
                 T* out);
// Reads rows of a 2-D dataset: ranges of rows, all columns, row-major, converted to T.
template <typename T>
void read_row_ranges(hid_t dset, const std::vector<hsize_t>& starts,
                     const std::vector<hsize_t>& counts, hsize_t n_cols, T* out);
// Strings of a 1-D dataset: variable or fixed length.
std::vector<std::string> read_strings(hid_t dset);

}  // namespace sctrain::io::h5

namespace sctrain::io::h5 {
// Compound datasets (anndata <= 0.6 obs/var): member names and class.
struct Field {
  std::string name;
  H5T_class_t cls;
  std::string dtype;
};
std::vector<Field> compound_fields(hid_t dset);
std::vector<std::string> read_field_strings(hid_t dset, const std::string& field);
std::vector<double> read_field_numbers(hid_t dset, const std::string& field);
}  // namespace sctrain::io::h5
