#include "io/hdf5_util.h"
#include "io/vlen_strings.h"

#include <cstring>
#include <stdexcept>
#include <type_traits>

namespace sctrain::io::h5 {
namespace {

[[noreturn]] void fail(const std::string& what) {
  std::string detail = last_error();
  throw std::runtime_error(detail.empty() ? what : what + " (" + detail + ")");
}

hid_t check(hid_t id, const char* what) {
  if (id < 0) fail(what);
  return id;
}

template <typename T>
hid_t native_type() {
  if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
  else if constexpr (std::is_same_v<T, int8_t>) return H5T_NATIVE_INT8;
  else if constexpr (std::is_same_v<T, uint8_t>) return H5T_NATIVE_UINT8;
  else if constexpr (std::is_same_v<T, int32_t>) return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, int64_t>) return H5T_NATIVE_INT64;
  else static_assert(sizeof(T) == 0, "unsupported type");
}

// Enum (h5py bool) values as signed integers of the enum's size.
int64_t enum_value(const unsigned char* p, size_t size) {
  switch (size) {
    case 1: return static_cast<int8_t>(*p);
    case 2: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case 4: { int32_t v; std::memcpy(&v, p, 4); return v; }
    default: { int64_t v; std::memcpy(&v, p, 8); return v; }
  }
}

// Reads the selection into out[n], converting from the file type to T.
template <typename T>
void read_selection(hid_t dset, hid_t mspace, hid_t fspace, size_t n, T* out) {
  Handle ftype(check(H5Dget_type(dset), "cannot read dataset type"));
  if (H5Tget_class(ftype.get()) == H5T_ENUM) {
    Handle mtype(check(H5Tget_native_type(ftype.get(), H5T_DIR_ASCEND), "bad enum type"));
    size_t size = H5Tget_size(mtype.get());
    std::vector<unsigned char> raw(n * size);
    if (H5Dread(dset, mtype.get(), mspace, fspace, H5P_DEFAULT, raw.data()) < 0)
      fail("cannot read dataset");
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(enum_value(&raw[i * size], size));
    return;
  }
  if (H5Dread(dset, native_type<T>(), mspace, fspace, H5P_DEFAULT, out) < 0)
    fail("cannot read dataset");
}

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

herr_t walk_errors(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n == 0 && err->desc) *out = err->desc;  // innermost
  return 0;
}

// A variable-length C string type in the stored type's character set (HDF5 >= 1.10.10 will
// not convert between ASCII and UTF-8).
Handle vlen_string_type(hid_t stored) {
  Handle mtype(H5Tcopy(H5T_C_S1));
  H5Tset_size(mtype.get(), H5T_VARIABLE);
  H5Tset_cset(mtype.get(), H5Tget_cset(stored));
  return mtype;
}

std::vector<std::string> read_vlen_strings(hid_t dset_or_attr, bool is_attr, hid_t space, size_t n) {
  Handle stored(is_attr ? H5Aget_type(dset_or_attr) : H5Dget_type(dset_or_attr));
  Handle mtype = vlen_string_type(stored.get());
  std::vector<char*> ptrs(n, nullptr);
  herr_t rc = is_attr ? H5Aread(dset_or_attr, mtype.get(), ptrs.data())
                      : H5Dread(dset_or_attr, mtype.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data());
  if (rc < 0) fail("cannot read strings");
  std::vector<std::string> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = ptrs[i] ? ptrs[i] : "";
  H5Dvlen_reclaim(mtype.get(), space, H5P_DEFAULT, ptrs.data());
  return out;
}

std::vector<std::string> split_fixed(const std::vector<char>& raw, size_t size, size_t n) {
  std::vector<std::string> out(n);
  for (size_t i = 0; i < n; ++i) {
    const char* p = raw.data() + i * size;
    size_t len = strnlen(p, size);
    while (len > 0 && p[len - 1] == ' ') --len;  // space-padded strings
    out[i].assign(p, len);
  }
  return out;
}

size_t n_points(hid_t space) {
  hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n < 0) fail("bad dataspace");
  return static_cast<size_t>(n);
}

}  // namespace

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: H5Fclose(id_); break;
    case H5I_GROUP: H5Gclose(id_); break;
    case H5I_DATASET: H5Dclose(id_); break;
    case H5I_ATTR: H5Aclose(id_); break;
    case H5I_DATATYPE: H5Tclose(id_); break;
    case H5I_DATASPACE: H5Sclose(id_); break;
    case H5I_GENPROP_LST: H5Pclose(id_); break;
    default: break;
  }
  id_ = -1;
}

void quiet_errors() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  // HDF5 keeps freed blocks on free lists without limit by default: memory would grow with
  // every chunk ever read. Cap them (bytes: global, per list) so memory follows the request.
  static const bool limited = [] { return H5set_free_list_limits(4 << 20, 1 << 20, 4 << 20, 1 << 20, 16 << 20, 4 << 20) >= 0; }();
  (void)limited;
}

std::string last_error() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_errors, &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg;
}

bool exists(hid_t loc, const std::string& path) {
  // Check each component: H5Lexists fails on a missing intermediate group.
  size_t pos = 0;
  while (true) {
    size_t next = path.find('/', pos + 1);
    std::string prefix = path.substr(0, next);
    if (!prefix.empty() && prefix != "/" && H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0)
      return false;
    if (next == std::string::npos) break;
    pos = next;
  }
  return H5Oexists_by_name(loc, path.c_str(), H5P_DEFAULT) > 0;
}

static H5O_type_t object_type(hid_t loc, const std::string& path) {
  if (!exists(loc, path)) return H5O_TYPE_UNKNOWN;
  H5O_info_t info;
  // Basic fields only: the full info walks a chunked dataset's whole B-tree.
  if (H5Oget_info_by_name2(loc, path.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0) return H5O_TYPE_UNKNOWN;
  return info.type;
}

bool is_group(hid_t loc, const std::string& path) { return object_type(loc, path) == H5O_TYPE_GROUP; }
bool is_dataset(hid_t loc, const std::string& path) {
  return object_type(loc, path) == H5O_TYPE_DATASET;
}

Handle open_group(hid_t loc, const std::string& path) {
  if (!is_group(loc, path)) return Handle();
  return Handle(H5Gopen2(loc, path.c_str(), H5P_DEFAULT));
}

Handle open_dataset(hid_t loc, const std::string& path, size_t cache_bytes) {
  if (!is_dataset(loc, path)) return Handle();
  Handle d(H5Dopen2(loc, path.c_str(), H5P_DEFAULT));
  if (!d || cache_bytes == 0) return d;
  // Compressed chunks are cached (each is decompressed once per visit); plain chunks are not:
  // HDF5 then reads only the selected bytes instead of whole chunks.
  Handle dcpl(H5Dget_create_plist(d.get()));
  bool filtered = H5Pget_layout(dcpl.get()) == H5D_CHUNKED && H5Pget_nfilters(dcpl.get()) > 0;
  Handle dapl(H5Pcreate(H5P_DATASET_ACCESS));
  H5Pset_chunk_cache(dapl.get(), 12421, filtered ? cache_bytes : 0, 1.0);
  return Handle(H5Dopen2(loc, path.c_str(), dapl.get()));
}

std::vector<std::string> child_names(hid_t group) {
  std::vector<std::string> names;
  // Creation order when tracked (anndata's h5py files track it), else by name.
  H5G_info_t info;
  H5Gget_info(group, &info);
  Handle gcpl(H5Gget_create_plist(group));
  unsigned flags = 0;
  H5Pget_link_creation_order(gcpl.get(), &flags);
  H5_index_t idx = (flags & H5P_CRT_ORDER_TRACKED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME;
  if (H5Literate(group, idx, H5_ITER_INC, nullptr, collect_name, &names) < 0) {
    names.clear();
    H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names);
  }
  return names;
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

std::vector<std::string> attr_strings(hid_t obj, const std::string& name) {
  if (!has_attr(obj, name)) return {};
  Handle attr(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "cannot open attribute"));
  Handle type(H5Aget_type(attr.get()));
  Handle space(H5Aget_space(attr.get()));
  size_t n = n_points(space.get());
  if (H5Tget_class(type.get()) != H5T_STRING) return {};  // e.g. empty column-order: float64[0]
  if (n == 0) return {};
  if (H5Tis_variable_str(type.get()) > 0) return read_vlen_strings(attr.get(), true, space.get(), n);
  size_t size = H5Tget_size(type.get());
  std::vector<char> raw(n * size);
  Handle mtype(H5Tcopy(type.get()));
  if (H5Aread(attr.get(), mtype.get(), raw.data()) < 0) fail("cannot read attribute " + name);
  return split_fixed(raw, size, n);
}

std::optional<std::string> attr_string(hid_t obj, const std::string& name) {
  auto v = attr_strings(obj, name);
  if (v.empty()) return std::nullopt;
  return v.front();
}

std::vector<int64_t> attr_ints(hid_t obj, const std::string& name) {
  if (!has_attr(obj, name)) return {};
  Handle attr(check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), "cannot open attribute"));
  Handle type(H5Aget_type(attr.get()));
  Handle space(H5Aget_space(attr.get()));
  size_t n = n_points(space.get());
  H5T_class_t cls = H5Tget_class(type.get());
  std::vector<int64_t> out(n);
  if (cls == H5T_INTEGER || cls == H5T_FLOAT) {
    if (n && H5Aread(attr.get(), H5T_NATIVE_INT64, out.data()) < 0) fail("cannot read " + name);
  } else if (cls == H5T_ENUM) {
    size_t size = H5Tget_size(type.get());
    std::vector<unsigned char> raw(n * size);
    if (n && H5Aread(attr.get(), type.get(), raw.data()) < 0) fail("cannot read " + name);
    for (size_t i = 0; i < n; ++i) out[i] = enum_value(&raw[i * size], size);
  } else {
    return {};
  }
  return out;
}

std::optional<int64_t> attr_int(hid_t obj, const std::string& name) {
  auto v = attr_ints(obj, name);
  if (v.empty()) return std::nullopt;
  return v.front();
}

Handle attr_deref(hid_t obj, const std::string& name) {
  if (!has_attr(obj, name)) return Handle();
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
  Handle type(H5Aget_type(attr.get()));
  if (H5Tget_class(type.get()) != H5T_REFERENCE) return Handle();
  hobj_ref_t ref;
  if (H5Aread(attr.get(), H5T_STD_REF_OBJ, &ref) < 0) fail("cannot read reference " + name);
  return Handle(H5Rdereference2(obj, H5P_DEFAULT, H5R_OBJECT, &ref));
}

std::vector<hsize_t> shape(hid_t dset) {
  Handle space(check(H5Dget_space(dset), "cannot read dataspace"));
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail("bad dataspace");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return dims;
}

std::string dtype_name(hid_t dtype) {
  size_t size = H5Tget_size(dtype);
  switch (H5Tget_class(dtype)) {
    case H5T_INTEGER:
      return std::string(H5Tget_sign(dtype) == H5T_SGN_NONE ? "uint" : "int") +
             std::to_string(size * 8);
    case H5T_FLOAT: return "float" + std::to_string(size * 8);
    case H5T_ENUM: return "bool";
    case H5T_STRING: return "str";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    default: return "unknown";
  }
}

template <typename T>
std::vector<T> read_slice(hid_t dset, hsize_t begin, hsize_t count) {
  std::vector<T> out(count);
  if (count == 0) return out;
  Handle fspace(check(H5Dget_space(dset), "cannot read dataspace"));
  if (H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &begin, nullptr, &count, nullptr) < 0)
    fail("slice out of range");
  Handle mspace(H5Screate_simple(1, &count, nullptr));
  read_selection(dset, mspace.get(), fspace.get(), count, out.data());
  return out;
}

template <typename T>
std::vector<T> read_all(hid_t dset) {
  Handle space(check(H5Dget_space(dset), "cannot read dataspace"));
  size_t n = n_points(space.get());
  std::vector<T> out(n);
  if (n) read_selection(dset, H5S_ALL, H5S_ALL, n, out.data());
  return out;
}

template <typename T>
void read_ranges(hid_t dset, const std::vector<hsize_t>& starts, const std::vector<hsize_t>& counts,
                 T* out) {
  // One read per range: HDF5's union selections cost memory and time proportional to the
  // span they cover, while a plain slab read touches only its bytes (and chunk cache).
  Handle fspace(check(H5Dget_space(dset), "cannot read dataspace"));
  for (size_t i = 0; i < starts.size(); ++i) {
    if (counts[i] == 0) continue;
    if (H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &starts[i], nullptr, &counts[i], nullptr) < 0)
      fail("range out of bounds");
    Handle mspace(H5Screate_simple(1, &counts[i], nullptr));
    read_selection(dset, mspace.get(), fspace.get(), counts[i], out);
    out += counts[i];
  }
}

template <typename T>
void read_row_ranges(hid_t dset, const std::vector<hsize_t>& starts,
                     const std::vector<hsize_t>& counts, hsize_t n_cols, T* out) {
  hsize_t rows = 0;
  Handle fspace(check(H5Dget_space(dset), "cannot read dataspace"));
  H5Sselect_none(fspace.get());
  for (size_t i = 0; i < starts.size(); ++i) {
    if (counts[i] == 0) continue;
    hsize_t start[2] = {starts[i], 0}, count[2] = {counts[i], n_cols};
    if (H5Sselect_hyperslab(fspace.get(), H5S_SELECT_OR, start, nullptr, count, nullptr) < 0)
      fail("rows out of bounds");
    rows += counts[i];
  }
  if (rows == 0 || n_cols == 0) return;
  hsize_t mdims[2] = {rows, n_cols};
  Handle mspace(H5Screate_simple(2, mdims, nullptr));
  read_selection(dset, mspace.get(), fspace.get(), rows * n_cols, out);
}

std::vector<std::string> read_strings(hid_t dset) {
  Handle type(check(H5Dget_type(dset), "cannot read dataset type"));
  Handle space(H5Dget_space(dset));
  size_t n = n_points(space.get());
  if (H5Tget_class(type.get()) != H5T_STRING) fail("expected strings, found " + dtype_name(type.get()));
  if (n == 0) return {};
  if (H5Tis_variable_str(type.get()) > 0) {
    if (auto direct = read_vlen_strings_direct(dset); direct && direct->size() == n) return std::move(*direct);
    return read_vlen_strings(dset, false, space.get(), n);
  }
  size_t size = H5Tget_size(type.get());
  std::vector<char> raw(n * size);
  Handle mtype(H5Tcopy(type.get()));
  if (H5Dread(dset, mtype.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0)
    fail("cannot read strings");
  return split_fixed(raw, size, n);
}

std::vector<Field> compound_fields(hid_t dset) {
  Handle type(check(H5Dget_type(dset), "cannot read dataset type"));
  if (H5Tget_class(type.get()) != H5T_COMPOUND) return {};
  int n = H5Tget_nmembers(type.get());
  std::vector<Field> out;
  for (int i = 0; i < n; ++i) {
    char* name = H5Tget_member_name(type.get(), i);
    Handle mt(H5Tget_member_type(type.get(), i));
    out.push_back({name, H5Tget_member_class(type.get(), i), dtype_name(mt.get())});
    H5free_memory(name);
  }
  return out;
}

// A memory compound type holding only `field`, of type `mtype`, at offset 0.
static Handle single_field_type(const std::string& field, hid_t mtype) {
  Handle ct(H5Tcreate(H5T_COMPOUND, H5Tget_size(mtype)));
  H5Tinsert(ct.get(), field.c_str(), 0, mtype);
  return ct;
}

static Handle member_type(hid_t dset, const std::string& field) {
  Handle type(check(H5Dget_type(dset), "cannot read dataset type"));
  int idx = H5Tget_member_index(type.get(), field.c_str());
  if (idx < 0) fail("no field '" + field + "'");
  return Handle(H5Tget_member_type(type.get(), idx));
}

std::vector<std::string> read_field_strings(hid_t dset, const std::string& field) {
  Handle ft = member_type(dset, field);
  Handle space(H5Dget_space(dset));
  size_t n = n_points(space.get());
  if (H5Tget_class(ft.get()) != H5T_STRING) fail("field '" + field + "' is not a string");
  if (H5Tis_variable_str(ft.get()) > 0) {
    Handle mt = vlen_string_type(ft.get());
    Handle ct = single_field_type(field, mt.get());
    std::vector<char*> ptrs(n, nullptr);
    if (H5Dread(dset, ct.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0) fail("cannot read field");
    std::vector<std::string> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = ptrs[i] ? ptrs[i] : "";
    H5Dvlen_reclaim(ct.get(), space.get(), H5P_DEFAULT, ptrs.data());
    return out;
  }
  size_t size = H5Tget_size(ft.get());
  Handle ct = single_field_type(field, ft.get());
  std::vector<char> raw(n * size);
  if (n && H5Dread(dset, ct.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0)
    fail("cannot read field '" + field + "'");
  return split_fixed(raw, size, n);
}

std::vector<double> read_field_numbers(hid_t dset, const std::string& field) {
  Handle ft = member_type(dset, field);
  Handle space(H5Dget_space(dset));
  size_t n = n_points(space.get());
  std::vector<double> out(n);
  if (n == 0) return out;
  if (H5Tget_class(ft.get()) == H5T_ENUM) {
    size_t size = H5Tget_size(ft.get());
    Handle ct = single_field_type(field, ft.get());
    std::vector<unsigned char> raw(n * size);
    if (H5Dread(dset, ct.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0) fail("cannot read field");
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<double>(enum_value(&raw[i * size], size));
    return out;
  }
  Handle ct = single_field_type(field, H5T_NATIVE_DOUBLE);
  if (H5Dread(dset, ct.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    fail("cannot read field '" + field + "'");
  return out;
}

#define SCTRAIN_H5_INSTANTIATE(T)                                                                \
  template std::vector<T> read_slice<T>(hid_t, hsize_t, hsize_t);                                \
  template std::vector<T> read_all<T>(hid_t);                                                    \
  template void read_ranges<T>(hid_t, const std::vector<hsize_t>&, const std::vector<hsize_t>&, \
                               T*);                                                              \
  template void read_row_ranges<T>(hid_t, const std::vector<hsize_t>&,                           \
                                   const std::vector<hsize_t>&, hsize_t, T*);
SCTRAIN_H5_INSTANTIATE(float)
SCTRAIN_H5_INSTANTIATE(double)
SCTRAIN_H5_INSTANTIATE(int8_t)
SCTRAIN_H5_INSTANTIATE(uint8_t)
SCTRAIN_H5_INSTANTIATE(int32_t)
SCTRAIN_H5_INSTANTIATE(int64_t)

}  // namespace sctrain::io::h5
