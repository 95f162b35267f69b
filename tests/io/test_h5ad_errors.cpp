// Bad input: each corruption of a real file gets an H5adError naming the file, the HDF5 path
// and the problem. Corrupted copies are made with the HDF5 C API in a temporary folder.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <fstream>

#include "io/h5ad.h"
#include "test_data.h"

namespace fs = std::filesystem;
using namespace sctrain::io;

namespace {

class Corrupted : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sctrain_io_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    path_ = (dir_ / "pbmc68k.h5ad").string();
    fs::copy_file(sctrain::testing::project_data("pbmc68k_reduced.h5ad"), path_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Opens the copy read-write for one edit.
  template <typename F>
  void edit(F&& f) {
    hid_t file = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    f(file);
    H5Fclose(file);
  }

  // Expects `fn` to throw an H5adError whose message names the file, `h5path` and `problem`.
  template <typename F>
  void expect_error(F&& fn, const std::string& h5path, const std::string& problem) {
    try {
      fn();
      FAIL() << "no error; expected: " << problem;
    } catch (const H5adError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(path_), std::string::npos) << msg;
      EXPECT_NE(msg.find(h5path), std::string::npos) << msg;
      EXPECT_NE(msg.find(problem), std::string::npos) << msg;
    }
  }

  fs::path dir_;
  std::string path_;
};

void write_ints(hid_t file, const char* dset, hsize_t at, int32_t value) {
  hid_t d = H5Dopen2(file, dset, H5P_DEFAULT);
  hid_t space = H5Dget_space(d);
  hsize_t one = 1;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &at, nullptr, &one, nullptr);
  hid_t mem = H5Screate_simple(1, &one, nullptr);
  H5Dwrite(d, H5T_NATIVE_INT32, mem, space, H5P_DEFAULT, &value);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(d);
}

void set_string_attr(hid_t file, const char* obj, const char* name, const char* value) {
  hid_t o = H5Oopen(file, obj, H5P_DEFAULT);
  H5Adelete(o, name);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(o, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, type, &value);
  H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
  H5Oclose(o);
}

TEST_F(Corrupted, NotHdf5) {
  std::ofstream(path_, std::ios::trunc) << "cell,gene,count\nA,B,1\n";
  expect_error([&] { H5adFile::open(path_); }, path_, "not an HDF5 file");
}

TEST_F(Corrupted, MissingFile) {
  fs::remove(path_);
  expect_error([&] { H5adFile::open(path_); }, path_, "no such file");
}

TEST_F(Corrupted, Truncated) {
  fs::resize_file(path_, fs::file_size(path_) / 2);
  expect_error([&] { H5adFile::open(path_); }, path_, "truncated or corrupt");
}

TEST_F(Corrupted, MissingX) {
  edit([](hid_t f) { ASSERT_GE(H5Ldelete(f, "/X", H5P_DEFAULT), 0); });
  expect_error([&] { H5adFile::open(path_); }, "/X", "missing X");
}

TEST_F(Corrupted, IndptrInconsistentWithShape) {
  edit([](hid_t f) {
    hid_t x = H5Oopen(f, "/X", H5P_DEFAULT);
    hid_t a = H5Aopen(x, "shape", H5P_DEFAULT);
    int64_t shape[2] = {800, 765};
    H5Awrite(a, H5T_NATIVE_INT64, shape);
    H5Aclose(a);
    H5Oclose(x);
  });
  H5adFile file = H5adFile::open(path_);
  expect_error([&] { file.matrix("X"); }, "/X/indptr", "indptr inconsistent with shape");
}

TEST_F(Corrupted, IndptrDecreasing) {
  edit([](hid_t f) { write_ints(f, "/X/indptr", 5, 0); });
  H5adFile file = H5adFile::open(path_);
  expect_error([&] { file.matrix("X"); }, "/X/indptr", "indptr inconsistent");
}

TEST_F(Corrupted, IndicesOutOfRange) {
  edit([](hid_t f) { write_ints(f, "/X/indices", 3, 99999); });
  H5adFile file = H5adFile::open(path_);
  Matrix x = file.matrix("X");
  expect_error([&] { x.read_rows(0, 2); }, "/X", "indices out of range");
  EXPECT_NO_THROW(x.read_rows(1, 3));  // rows that do not touch the bad entry still read
}

TEST_F(Corrupted, UnknownEncoding) {
  edit([](hid_t f) { set_string_attr(f, "/X", "encoding-type", "coo_matrix"); });
  expect_error([&] { H5adFile::open(path_); }, "/X", "unknown encoding 'coo_matrix'");
}

TEST_F(Corrupted, UnknownColumnEncoding) {
  edit([](hid_t f) { set_string_attr(f, "/obs/phase", "encoding-type", "awkward-array"); });
  H5adFile file = H5adFile::open(path_);
  expect_error([&] { file.obs(); }, "/obs/phase", "unknown encoding 'awkward-array'");
}

TEST_F(Corrupted, MissingLayer) {
  H5adFile file = H5adFile::open(path_);
  expect_error([&] { file.matrix("layers/counts"); }, "layers/counts", "matrices present: X, layers/lognorm_source");
}

}  // namespace

namespace {

// Writes a 1-D dataset with contiguous storage (what older anndata wrote without compression).
template <typename T>
void write_contiguous(hid_t group, const char* name, hid_t type, const T& v) {
  hsize_t n = v.size();
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t d = H5Dcreate2(group, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
  H5Dclose(d);
  H5Sclose(space);
}

TEST(Storage, ContiguousCsrReadsLikeTheChunkedOriginal) {
  H5adFile src = H5adFile::open(sctrain::testing::project_data("pbmc68k_reduced.h5ad"));
  CellRows all = src.matrix("X").read_rows(0, src.n_obs());
  fs::path path = fs::temp_directory_path() / ("sctrain_contiguous_" + std::to_string(::getpid()) + ".h5ad");
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t x = H5Gcreate2(f, "X", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  write_contiguous(x, "data", H5T_NATIVE_FLOAT, all.values);
  write_contiguous(x, "indices", H5T_NATIVE_INT32, all.indices);
  write_contiguous(x, "indptr", H5T_NATIVE_INT64, all.indptr);
  int64_t shape[2] = {all.n_rows(), all.n_cols};
  hsize_t two = 2;
  hid_t sspace = H5Screate_simple(1, &two, nullptr);
  hid_t a = H5Acreate2(x, "shape", H5T_NATIVE_INT64, sspace, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, shape);
  H5Aclose(a);
  H5Sclose(sspace);
  hid_t stype = H5Tcopy(H5T_C_S1);
  H5Tset_size(stype, H5T_VARIABLE);
  hid_t scalar = H5Screate(H5S_SCALAR);
  const char* enc = "csr_matrix";
  a = H5Acreate2(x, "encoding-type", stype, scalar, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, stype, &enc);
  H5Aclose(a);
  H5Sclose(scalar);
  H5Tclose(stype);
  H5Gclose(x);
  H5Fclose(f);

  H5adFile copy = H5adFile::open(path.string());
  Matrix m = copy.matrix("X");
  std::vector<int64_t> rows = {699, 3, 3, 350, 0, 12};
  CellRows got = m.read_rows(rows), want = src.matrix("X").read_rows(rows);
  EXPECT_EQ(got.indptr, want.indptr);
  EXPECT_EQ(got.indices, want.indices);
  EXPECT_EQ(got.values, want.values);
  fs::remove(path);
}

}  // namespace
