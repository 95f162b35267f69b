// What the reader takes straight from the file's structures equals HDF5's own answer for every
// real file and fixture: the chunk index read from a dataset's B-tree, chunk by chunk, and
// variable-length strings resolved through the global heap.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "io/chunk_index.h"
#include "io/lzf_filter.h"
#include "io/vlen_strings.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace sctrain::io;

namespace {

std::vector<std::string> h5ad_files() {
  std::vector<std::string> files;
  for (const std::string dir : {std::string(SCTRAIN_SOURCE_DIR) + "/data", std::string(SCTRAIN_SOURCE_DIR) + "/tests/fixtures",
                                std::string(SCTRAIN_SHARED_DATA)}) {
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".h5ad") files.push_back(e.path().string());
  }
  return files;
}

// fn(dataset, name, fd) for every dataset of the file at path (fd: the file opened for pread).
void for_each_dataset(const std::string& path, const std::function<void(hid_t, const char*, int)>& fn) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  struct Visit {
    const std::function<void(hid_t, const char*, int)>* fn;
    int fd;
  } v{&fn, ::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  ASSERT_GE(v.fd, 0);
  auto each = [](hid_t root, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type != H5O_TYPE_DATASET) return 0;
    const Visit& v = *static_cast<const Visit*>(data);
    hid_t d = H5Dopen2(root, name, H5P_DEFAULT);
    (*v.fn)(d, name, v.fd);
    H5Dclose(d);
    return 0;
  };
#if H5_VERSION_GE(1, 12, 0)
  H5Ovisit3(f, H5_INDEX_NAME, H5_ITER_NATIVE, each, &v, H5O_INFO_BASIC);
#else
  H5Ovisit2(f, H5_INDEX_NAME, H5_ITER_NATIVE, each, &v, H5O_INFO_BASIC);
#endif
  ::close(v.fd);
  H5Fclose(f);
}

TEST(VlenStrings, DirectEqualsHdf5ForEveryRealFile) {
  register_lzf_filter();  // the fixture's lzf datasets, for HDF5's own reads
  int direct = 0, strings = 0;
  for (const std::string& path : h5ad_files()) {
    SCOPED_TRACE(path);
    int read_directly = 0, fallback = 0, n_strings = 0;
    for_each_dataset(path, [&](hid_t d, const char* name, int) {
      hid_t type = H5Dget_type(d), space = H5Dget_space(d);
      if (H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) > 0 && H5Sget_simple_extent_ndims(space) == 1) {
        SCOPED_TRACE(name);
        const hssize_t n = H5Sget_simple_extent_npoints(space);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(type));
        std::vector<char*> p(static_cast<size_t>(n), nullptr);
        EXPECT_GE(H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.data()), 0);
        const auto got = read_vlen_strings_direct(d);
        if (got) {
          ++read_directly;
          n_strings += static_cast<int>(n);
          EXPECT_EQ(got->size(), static_cast<size_t>(n));
          for (hssize_t i = 0; i < n && i < static_cast<hssize_t>(got->size()); ++i)
            EXPECT_EQ((*got)[i], p[i] ? std::string(p[i]) : std::string()) << i;
        } else {
          ++fallback;
        }
        H5Dvlen_reclaim(mt, space, H5P_DEFAULT, p.data());
        H5Tclose(mt);
      }
      H5Sclose(space);
      H5Tclose(type);
    });
    direct += read_directly;
    strings += n_strings;
    std::printf("%s: %d string datasets read directly (%d strings), %d through HDF5\n", fs::path(path).filename().c_str(),
                read_directly, n_strings, fallback);
  }
  EXPECT_GT(direct, 10);
  EXPECT_GT(strings, 10000);
}

// Written here: empty, UTF-8 and long (past one 4 KB heap collection) strings, contiguous and
// chunked with gzip, in the oldest and the newest format.
TEST(VlenStrings, EmptyUtf8AndLongStrings) {
  std::vector<std::string> want = {"", "a", "CD3E", "\xc3\xa9\xe6\xbc\xa2", std::string(5000, 'x'), ""};
  for (int i = 0; i < 300; ++i) want.push_back("gene" + std::to_string(i * 7919));
  const fs::path dir = fs::temp_directory_path() / ("sctrain_vlen_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const bool latest : {false, true})
    for (const bool chunked : {false, true}) {
      SCOPED_TRACE(std::string(latest ? "latest" : "earliest") + (chunked ? " chunked" : " contiguous"));
      const std::string path = (dir / "s.h5").string();
      hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
      if (latest) H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
      hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
      const hsize_t n = want.size(), chunk = 16;
      hid_t space = H5Screate_simple(1, &n, nullptr), dcpl = H5Pcreate(H5P_DATASET_CREATE);
      if (chunked) {
        H5Pset_chunk(dcpl, 1, &chunk);
        H5Pset_deflate(dcpl, 4);
      }
      hid_t type = H5Tcopy(H5T_C_S1);
      H5Tset_size(type, H5T_VARIABLE);
      H5Tset_cset(type, H5T_CSET_UTF8);
      hid_t d = H5Dcreate2(f, "names", type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
      std::vector<const char*> p;
      for (const auto& w : want) p.push_back(w.c_str());
      ASSERT_GE(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.data()), 0);
      H5Dclose(d);
      H5Tclose(type);
      H5Pclose(dcpl);
      H5Sclose(space);
      H5Fclose(f);
      H5Pclose(fapl);
      f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
      d = H5Dopen2(f, "names", H5P_DEFAULT);
      const auto got = read_vlen_strings_direct(d);
      ASSERT_TRUE(got.has_value());
      EXPECT_EQ(*got, want);
      H5Dclose(d);
      H5Fclose(f);
    }
  fs::remove_all(dir);
}

TEST(ChunkIndex, BtreeEqualsHdf5ForEveryRealFile) {
  int from_btree = 0, chunks = 0;
  for (const std::string& path : h5ad_files()) {
    SCOPED_TRACE(path);
    int tree_datasets = 0, api_only = 0, tree_chunks = 0;
    for_each_dataset(path, [&](hid_t d, const char* name, int fd) {
      hid_t space = H5Dget_space(d), dcpl = H5Dget_create_plist(d);
      hsize_t n = 0, chunk = 0;
      if (H5Sget_simple_extent_ndims(space) == 1 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 1, &chunk) == 1) {
        H5Sget_simple_extent_dims(space, &n, nullptr);
        const int64_t n_chunks = static_cast<int64_t>((n + chunk - 1) / chunk);
        SCOPED_TRACE(name);
        const auto api = chunk_index_by_api(d, static_cast<int64_t>(chunk), n_chunks);
        EXPECT_TRUE(api.has_value());
        const auto tree = chunk_index_from_btree(d, fd, static_cast<int64_t>(chunk), n_chunks);
        if (tree && api && n_chunks > 0) {
          ++tree_datasets;
          tree_chunks += static_cast<int>(n_chunks);
          EXPECT_EQ(tree->addr, api->addr);
          EXPECT_EQ(tree->bytes, api->bytes);
          EXPECT_EQ(tree->mask, api->mask);
        } else {
          ++api_only;
        }
      }
      H5Pclose(dcpl);
      H5Sclose(space);
    });
    from_btree += tree_datasets;
    chunks += tree_chunks;
    std::printf("%s: %d chunked datasets from the B-tree (%d chunks), %d through HDF5 only\n",
                fs::path(path).filename().c_str(), tree_datasets, tree_chunks, api_only);
  }
  // pbmc3k_seurat (h5py's default layout, gzip chunks) is read from its B-tree.
  EXPECT_GT(from_btree, 0);
  EXPECT_GT(chunks, 100);
}

// Written here with the HDF5 API: a deep B-tree (3,000 chunks of 4 values, with gzip) whose
// last chunks were never written, as h5py lays it out; and the same with the newest format
// (a chunk index that is no B-tree), which falls back to HDF5's answer.
TEST(ChunkIndex, DeepTreeUnwrittenChunksAndNewestFormat) {
  const fs::path dir = fs::temp_directory_path() / ("sctrain_chunk_index_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const bool latest : {false, true}) {
    SCOPED_TRACE(latest ? "libver latest" : "libver earliest");
    const std::string path = (dir / (latest ? "latest.h5" : "earliest.h5")).string();
    const hsize_t n = 12000, chunk = 4, written = 11600;
    {
      hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
      if (latest) H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
      hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
      hid_t space = H5Screate_simple(1, &n, nullptr), dcpl = H5Pcreate(H5P_DATASET_CREATE);
      H5Pset_chunk(dcpl, 1, &chunk);
      H5Pset_deflate(dcpl, 4);
      hid_t d = H5Dcreate2(f, "values", H5T_NATIVE_INT32, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
      std::vector<int32_t> v(written);
      for (hsize_t i = 0; i < written; ++i) v[i] = static_cast<int32_t>(i * 7 % 1000);
      const hsize_t start = 0;
      hid_t mem = H5Screate_simple(1, &written, nullptr);
      H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &written, nullptr);
      ASSERT_GE(H5Dwrite(d, H5T_NATIVE_INT32, mem, space, H5P_DEFAULT, v.data()), 0);
      H5Sclose(mem);
      H5Dclose(d);
      H5Pclose(dcpl);
      H5Sclose(space);
      H5Fclose(f);
      H5Pclose(fapl);
    }
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "values", H5P_DEFAULT);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    const int64_t n_chunks = static_cast<int64_t>(n / chunk);
    const auto api = chunk_index_by_api(d, chunk, n_chunks);
    const auto tree = chunk_index_from_btree(d, fd, chunk, n_chunks);
    const auto chosen = read_chunk_index(d, fd, chunk, n_chunks);
    ASSERT_TRUE(api && chosen);
    EXPECT_EQ(api->addr[n_chunks - 1], HADDR_UNDEF);  // never written
    EXPECT_NE(api->addr[written / chunk - 1], HADDR_UNDEF);
    EXPECT_EQ(chosen->addr, api->addr);
    EXPECT_EQ(chosen->bytes, api->bytes);
    if (latest) {
      EXPECT_FALSE(tree.has_value());
    } else {
      ASSERT_TRUE(tree.has_value());
      EXPECT_EQ(tree->addr, api->addr);
      EXPECT_EQ(tree->bytes, api->bytes);
      EXPECT_EQ(tree->mask, api->mask);
    }
    ::close(fd);
    H5Dclose(d);
    H5Fclose(f);
  }
  fs::remove_all(dir);
}

}  // namespace
