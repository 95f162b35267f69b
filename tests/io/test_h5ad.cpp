// Reader tests: every real file against figures anndata 0.12 read from it
// (scripts/anndata_figures.py prints them), and one generated fixture for CSC,
// int64 indices, lzf, integer dtypes and nullable columns (scripts/make_fixtures.py).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "io/h5ad.h"
#include "test_data.h"

using namespace sctrain::io;
using sctrain::testing::project_data;
using sctrain::testing::shared_data;

namespace {

struct Entry {
  int32_t col;
  double value;
};
struct RowFigure {
  std::string matrix;
  int64_t row;
  double sum;
  int64_t nonzero;
  std::vector<Entry> entries;
};
struct MatrixFigure {
  std::string name;
  Encoding encoding;
  std::string dtype;
  std::optional<int64_t> nnz;
  double sum;
};
struct ColumnFigure {
  std::string name;
  ColumnType type;
  size_t n_categories;
  std::string first, last;
};
struct FileFigure {
  std::string file;
  bool in_project;  // shipped in data/ (else ../shared/data only)
  int64_t n_obs, n_vars;
  Format format;
  std::vector<MatrixFigure> matrices;
  std::vector<RowFigure> rows;
  std::vector<ColumnFigure> obs;
  std::string obs_first, obs_last, var_first, var_last;
};

const std::vector<FileFigure>& figures() {
  using E = Encoding;
  using C = ColumnType;
  static const std::vector<FileFigure> f = {
      {"pbmc3k_seurat.h5ad", true, 2638, 13714, Format::Anndata08,
       {{"X", E::Csr, "float32", 2238732, 6254880.0}, {"layers/lognorm_source", E::Csr, "float32", 2238732, 4535670.125157654}},
       {{"X", 0, 2419, 779, {{29, 1}, {73, 1}, {13708, 4}}},
        {"X", 1319, 1774, 842, {{16, 1}, {19, 1}, {13708, 1}}},
        {"X", 2637, 1984, 723, {{33, 1}, {56, 1}, {13708, 3}}},
        {"layers/lognorm_source", 0, 1605.823438167572, 779, {{29, 1.6358733177185059}, {13708, 2.8642420768737793}}}},
       {{"nCount_RNA", C::Numeric, 0, "2419", "1984"},
        {"nFeature_RNA", C::Numeric, 0, "779", "723"},
        {"percent.mt", C::Numeric, 0, "3.01777594", "0.806451613"},
        {"seurat_clusters", C::Numeric, 0, "1", "0"},
        {"classified", C::Categorical, 9, "Memory CD4 T", "Naive CD4 T"},
        {"cell_type", C::Categorical, 9, "Memory CD4 T", "Naive CD4 T"}},
       "AAACATACAACCAC", "TTTGCATGCCTCAC", "AL627309.1", "SRSF10.1"},
      {"pbmc68k_reduced.h5ad", true, 700, 765, Format::Anndata08,
       {{"X", E::Csr, "float32", 174400, 486651.0}, {"layers/lognorm_source", E::Csr, "float32", 174400, 319044.23824107647}},
       {{"X", 0, 628, 217, {{3, 1}, {4, 1}, {764, 2}}},
        {"X", 350, 550, 234, {{2, 2}, {3, 4}, {763, 2}}},
        {"X", 699, 1169, 298, {{2, 1}, {3, 4}, {761, 3}}}},
       {{"bulk_labels", C::Categorical, 10, "CD14+ Monocyte", "Dendritic"},
        {"n_genes", C::Numeric, 0, "1003", "1552"},
        {"n_counts", C::Numeric, 0, "2557", "4685"},
        {"louvain", C::Categorical, 11, "1", "2"},
        {"phase", C::Categorical, 3, "G1", "G1"},
        {"cell_type", C::Categorical, 10, "CD14+ Monocyte", "Dendritic"}},
       "AAAGCCTGGCTAAC-1", "TTGAGGTGGAGAGC-8", "HES4", "MT-ND3"},
      {"orig_scanpy_pbmc68k_reduced.h5ad", true, 700, 765, Format::Anndata08,
       {{"X", E::Dense, "float32", std::nullopt, -243.681057988666}, {"raw/X", E::Csr, "float32", 174400, 319044.23824107647}},
       {{"X", 0, 3.989999508485198, 765, {{0, -0.32600000500679016}, {1, -0.19099999964237213}, {764, 4.011000156402588}}},
        {"X", 699, 6.104999095201492, 765, {{0, -0.32600000500679016}, {764, -0.49000000953674316}}},
        {"raw/X", 350, 425.1189901828766, 234, {{2, 2.000999927520752}, {3, 2.624000072479248}, {763, 2.000999927520752}}}},
       {{"bulk_labels", C::Categorical, 10, "CD14+ Monocyte", "Dendritic"},
        {"n_genes", C::Numeric, 0, "1003", "1552"},
        {"percent_mito", C::Numeric, 0, "0.0238560811", "0.0108858058"},
        {"phase", C::Categorical, 3, "G1", "G1"},
        {"louvain", C::Categorical, 11, "1", "2"}},
       "AAAGCCTGGCTAAC-1", "TTGAGGTGGAGAGC-8", "HES4", "MT-ND3"},
      {"orig_scanpy_pbmc68k_reduced_legacy.h5ad", true, 700, 765, Format::Legacy,
       {{"X", E::Dense, "float32", std::nullopt, -243.681057988666}, {"raw/X", E::Csr, "float32", 174400, 319044.23824107647}},
       {{"X", 0, 3.989999508485198, 765, {{0, -0.32600000500679016}, {764, 4.011000156402588}}},
        {"raw/X", 699, 513.0229952335358, 298, {{2, 1.1419999599456787}, {3, 2.255000114440918}, {761, 2.002000093460083}}}},
       {{"bulk_labels", C::Categorical, 10, "CD14+ Monocyte", "Dendritic"},
        {"n_genes", C::Numeric, 0, "1003", "1552"},
        {"phase", C::Categorical, 3, "G1", "G1"},
        {"louvain", C::Categorical, 11, "1", "2"}},
       "AAAGCCTGGCTAAC-1", "TTGAGGTGGAGAGC-8", "HES4", "MT-ND3"},
      {"orig_scvelo_pancreas_50obs.h5ad", true, 50, 27998, Format::Anndata07,
       {{"X", E::Csr, "float32", 126494, 335512.0},
        {"layers/spliced", E::Csr, "float32", 126494, 335512.0},
        {"layers/unspliced", E::Csr, "float32", 42367, 65046.0}},
       {{"X", 0, 6884, 2358, {{18, 1}, {32, 37}, {27256, 3}}},
        {"layers/unspliced", 25, 1501, 1070, {{10, 1}, {24, 1}, {27997, 1}}}},
       {},
       "AGCGGTCGTGTATGGG", "AGTCTTTAGTCTCGGC", "Xkr4", "Erdr1"},
      {"kang_pbmc_ctrl.h5ad", false, 8684, 2511, Format::Anndata08,
       {{"X", E::Csr, "float32", 3683938, 11171820.0}},
       {{"X", 4342, 802, 302, {{34, 9}, {38, 1}, {2507, 1}}}},
       {{"sample_id", C::Numeric, 0, "1016", "1488"},
        {"cluster_id", C::Categorical, 4, "CD14+ Monocytes", "CD4 T cells"},
        {"offset", C::Numeric, 0, "7.94449216", "7.16703788"},
        {"batch", C::Categorical, 5, "1016", "1488"}},
       "AAACATACATTTCC-1", "TTTGCATGTTCATC-1", "ENSG00000188976", "ENSG00000160310"},
      {"lung_5cl_celseq2.h5ad", false, 542, 16039, Format::Anndata08,
       {{"X", E::Csr, "float32", 2965500, 13045783.0}},
       {{"X", 541, 6360, 2666, {{9, 1}, {15, 1}, {16008, 1}}}},
       {{"batch", C::Categorical, 3, "sc_Celseq2_5cl_p1", "sc_Celseq2_5cl_p3"},
        {"demuxlet_cls", C::Categorical, 1, "SNG", "SNG"},
        {"total_count_per_cell", C::Numeric, 0, "35046", "6577"},
        {"n_spike_counts", C::Numeric, 0, "308", "105"}},
       "p1:A1", "p3:P8", "ENSG00000000003", "ENSG00000285467"},
      {"dentategyrus_200.h5ad", false, 200, 530, Format::Anndata08,
       {{"X", E::Csr, "float32", 42351, 135234.0}, {"layers/unspliced", E::Csr, "float32", 18484, 34114.0}},
       {{"X", 199, 849, 285, {{0, 1}, {1, 2}, {529, 2}}}},
       {{"clusters", C::Categorical, 14, "Granule immature", "Granule immature"},
        {"age(days)", C::Categorical, 2, "35", "35"}},
       "ATTCTTCTAGTACC", "GACAACACGCAGAG", "Tcea1", "Erdr1"},
  };
  return f;
}

std::string path_of(const FileFigure& f) {
  return f.in_project ? project_data(f.file) : shared_data(f.file);
}

double row_sum(const CellRows& r, int64_t i) {
  double s = 0;
  for (int64_t k = r.indptr[i]; k < r.indptr[i + 1]; ++k) s += r.values[k];
  return s;
}

double value_at(const CellRows& r, int64_t i, int32_t col) {
  for (int64_t k = r.indptr[i]; k < r.indptr[i + 1]; ++k)
    if (r.indices[k] == col) return r.values[k];
  return 0.0;
}

void expect_same_rows(const CellRows& a, const CellRows& b, double tol = 0) {
  ASSERT_EQ(a.n_rows(), b.n_rows());
  ASSERT_EQ(a.indptr, b.indptr);
  ASSERT_EQ(a.indices, b.indices);
  for (size_t k = 0; k < a.values.size(); ++k) ASSERT_NEAR(a.values[k], b.values[k], tol) << "entry " << k;
}

class RealFile : public ::testing::TestWithParam<FileFigure> {};

TEST_P(RealFile, MatchesAnndata) {
  const FileFigure& fig = GetParam();
  std::string path = path_of(fig);
  if (path.empty()) GTEST_SKIP() << fig.file << " is only in ../shared/data, which is absent";
  H5adFile f = H5adFile::open(path);
  EXPECT_EQ(f.n_obs(), fig.n_obs);
  EXPECT_EQ(f.n_vars(), fig.n_vars);
  EXPECT_EQ(f.format(), fig.format);

  for (const auto& mf : fig.matrices) {
    SCOPED_TRACE(mf.name);
    ASSERT_TRUE(f.has_matrix(mf.name));
    Matrix m = f.matrix(mf.name);
    EXPECT_EQ(m.info().encoding, mf.encoding);
    EXPECT_EQ(m.info().dtype, mf.dtype);
    EXPECT_EQ(m.info().nnz, mf.nnz);
    EXPECT_EQ(m.info().n_rows, fig.n_obs);
    // Whole-matrix sum two ways: the stats scan, and all rows read in blocks.
    MatrixStats s = m.scan_stats();
    EXPECT_NEAR(s.sum, mf.sum, 1e-6 * std::max(1.0, std::fabs(mf.sum)));
    double total = 0;
    for (int64_t b = 0; b < fig.n_obs; b += 257) {
      CellRows r = m.read_rows(b, std::min(fig.n_obs, b + 257));
      for (int64_t i = 0; i < r.n_rows(); ++i) total += row_sum(r, i);
    }
    EXPECT_NEAR(total, mf.sum, 1e-6 * std::max(1.0, std::fabs(mf.sum)));
  }

  for (const auto& rf : fig.rows) {
    SCOPED_TRACE(rf.matrix + " row " + std::to_string(rf.row));
    Matrix m = f.matrix(rf.matrix);
    std::vector<int64_t> one = {rf.row};
    CellRows r = m.read_rows(one);
    ASSERT_EQ(r.n_rows(), 1);
    EXPECT_NEAR(row_sum(r, 0), rf.sum, 1e-4 * std::max(1.0, std::fabs(rf.sum)));
    EXPECT_EQ(r.row_nnz(0), rf.nonzero);
    for (const auto& e : rf.entries) EXPECT_NEAR(value_at(r, 0, e.col), e.value, 1e-6) << "column " << e.col;
    EXPECT_TRUE(std::is_sorted(r.indices.begin(), r.indices.end()));
  }

  Dataframe obs = f.obs();
  ASSERT_EQ(static_cast<int64_t>(obs.index.size()), fig.n_obs);
  EXPECT_EQ(obs.index.front(), fig.obs_first);
  EXPECT_EQ(obs.index.back(), fig.obs_last);
  for (const auto& cf : fig.obs) {
    SCOPED_TRACE(cf.name);
    const Column* c = obs.find(cf.name);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->type, cf.type);
    ASSERT_EQ(static_cast<int64_t>(c->size()), fig.n_obs);
    if (cf.type == ColumnType::Categorical) EXPECT_EQ(c->categories.size(), cf.n_categories);
    EXPECT_EQ(c->text(0), cf.first);
    EXPECT_EQ(c->text(c->size() - 1), cf.last);
  }
  auto var = f.var_names();
  ASSERT_EQ(static_cast<int64_t>(var.size()), fig.n_vars);
  EXPECT_EQ(var.front(), fig.var_first);
  EXPECT_EQ(var.back(), fig.var_last);
}

INSTANTIATE_TEST_SUITE_P(AllFiles, RealFile, ::testing::ValuesIn(figures()),
                         [](const auto& info) {
                           std::string n = info.param.file.substr(0, info.param.file.find('.'));
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(Reader, RandomRowsEqualContiguousRows) {
  // pbmc3k: gzip chunks, read through HDF5; scvelo: plain chunks, read directly with pread.
  for (const char* name : {"pbmc3k_seurat.h5ad", "orig_scvelo_pancreas_50obs.h5ad"}) {
    SCOPED_TRACE(name);
    H5adFile f = H5adFile::open(project_data(name));
    Matrix m = f.matrix("X");
    std::mt19937 rng(7);
    std::vector<int64_t> rows(300);
    for (auto& r : rows) r = std::uniform_int_distribution<int64_t>(0, f.n_obs() - 1)(rng);
    rows.push_back(rows.front());  // a duplicate
    rows.push_back(f.n_obs() - 1);  // a run of two
    rows.push_back(0);
    rows.push_back(1);
    CellRows random = m.read_rows(rows);
    ASSERT_EQ(random.n_rows(), static_cast<int64_t>(rows.size()));
    for (size_t i = 0; i < rows.size(); ++i) {
      CellRows one = m.read_rows(rows[i], rows[i] + 1);
      ASSERT_EQ(random.row_nnz(i), one.row_nnz(0)) << "row " << rows[i];
      for (int64_t k = 0; k < one.row_nnz(0); ++k) {
        ASSERT_EQ(random.indices[random.indptr[i] + k], one.indices[k]);
        ASSERT_EQ(random.values[random.indptr[i] + k], one.values[k]);
      }
    }
  }
}

TEST(Reader, LayoutsOfOneDatasetAgree) {
  // The same log-normalised data stored as a 0.8 CSR layer, 0.8 raw/X, and legacy h5sparse raw.X.
  Matrix layer = H5adFile::open(project_data("pbmc68k_reduced.h5ad")).matrix("layers/lognorm_source");
  Matrix raw = H5adFile::open(project_data("orig_scanpy_pbmc68k_reduced.h5ad")).matrix("raw/X");
  Matrix legacy = H5adFile::open(project_data("orig_scanpy_pbmc68k_reduced_legacy.h5ad")).matrix("raw/X");
  EXPECT_EQ(legacy.info().h5path, "/raw.X");
  CellRows a = layer.read_rows(0, 700), b = raw.read_rows(0, 700), c = legacy.read_rows(0, 700);
  expect_same_rows(a, b);
  expect_same_rows(a, c);
  // Dense X of the 0.8 file and of the legacy file.
  expect_same_rows(H5adFile::open(project_data("orig_scanpy_pbmc68k_reduced.h5ad")).matrix("X").read_rows(100, 200),
                   H5adFile::open(project_data("orig_scanpy_pbmc68k_reduced_legacy.h5ad")).matrix("X").read_rows(100, 200));
}

TEST(Reader, CscInt64LzfAndIntegerDtypesAgreeWithCsr) {
  H5adFile f = H5adFile::open(std::string(SCTRAIN_SOURCE_DIR) + "/tests/fixtures/pbmc68k_csc_int64.h5ad");
  EXPECT_EQ(f.n_obs(), 120);
  Matrix csc = f.matrix("X");
  EXPECT_EQ(csc.info().encoding, Encoding::Csc);
  EXPECT_EQ(csc.info().dtype, "float64");
  Matrix dense = f.matrix("layers/counts_int32");
  EXPECT_EQ(dense.info().encoding, Encoding::Dense);
  EXPECT_EQ(dense.info().dtype, "int32");
  Matrix u16 = f.matrix("layers/counts_csr_uint16");
  EXPECT_EQ(u16.info().dtype, "uint16");
  Matrix raw = f.matrix("raw/X");
  // The same counts as the first 120 cells of pbmc68k_reduced's X.
  Matrix src = H5adFile::open(project_data("pbmc68k_reduced.h5ad")).matrix("X");
  std::vector<int64_t> rows = {119, 0, 60, 5, 5, 77};
  CellRows expected = src.read_rows(rows);
  expect_same_rows(csc.read_rows(rows), expected);
  expect_same_rows(dense.read_rows(rows), expected);
  expect_same_rows(u16.read_rows(rows), expected);
  expect_same_rows(raw.read_rows(rows), expected);
  EXPECT_NEAR(csc.scan_stats().sum, 84271.0, 1e-9);
  MatrixStats s = dense.scan_stats();
  EXPECT_NEAR(s.sum, 84271.0, 1e-9);
  EXPECT_TRUE(s.integer_valued);
  EXPECT_EQ(s.cell_entries[0], 217);
  EXPECT_EQ(csc.scan_stats().cell_entries, s.cell_entries);
  EXPECT_EQ(f.var_names("raw/X").front(), "raw_HES4");  // nullable-string-array index
}

TEST(Reader, NullableAndBooleanColumns) {
  H5adFile f = H5adFile::open(std::string(SCTRAIN_SOURCE_DIR) + "/tests/fixtures/pbmc68k_csc_int64.h5ad");
  Dataframe obs = f.obs();
  EXPECT_EQ(obs.index_name, "cell");
  const Column* n = obs.find("n_genes_nullable");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->type, ColumnType::Numeric);
  EXPECT_EQ(n->text(0), "");  // <NA>
  EXPECT_EQ(n->text(1), "231");
  EXPECT_EQ(n->text(7), "");
  const Column* mono = obs.find("is_monocyte");
  ASSERT_TRUE(mono);
  EXPECT_EQ(mono->type, ColumnType::Boolean);
  EXPECT_EQ(mono->text(0), "");
  EXPECT_EQ(mono->text(1), "False");
  EXPECT_EQ(mono->text(9), "True");
  const Column* note = obs.find("note");
  ASSERT_TRUE(note);
  EXPECT_EQ(note->type, ColumnType::String);
  EXPECT_EQ(note->text(0), "");
  EXPECT_EQ(note->text(1), "note1");
  const Column* phase = obs.find("phase");
  ASSERT_TRUE(phase);
  EXPECT_EQ(phase->type, ColumnType::Categorical);
  EXPECT_TRUE(phase->ordered);
  EXPECT_EQ(phase->codes[0], -1);
  EXPECT_EQ(phase->text(0), "");
  EXPECT_EQ(phase->text(1), "S");
  const Column* high = obs.find("high_counts");
  ASSERT_TRUE(high);
  EXPECT_EQ(high->type, ColumnType::Boolean);
  // Legacy compound var: bool field stored as an h5py enum.
  Dataframe var = H5adFile::open(project_data("orig_scanpy_pbmc68k_reduced_legacy.h5ad")).var();
  const Column* hv = var.find("highly_variable");
  ASSERT_TRUE(hv);
  EXPECT_EQ(hv->type, ColumnType::Boolean);
  EXPECT_EQ(hv->text(0), "True");
  EXPECT_EQ(hv->text(764), "False");
}

TEST(Reader, StatsTellCountsFromNormalisedValues) {
  H5adFile f = H5adFile::open(project_data("pbmc68k_reduced.h5ad"));
  MatrixStats counts = f.matrix("X").scan_stats();
  EXPECT_TRUE(counts.integer_valued);
  EXPECT_EQ(counts.min, 0.0);  // implicit zeros
  EXPECT_EQ(counts.cell_entries.size(), 700u);
  EXPECT_EQ(counts.cell_entries[350], 234);
  MatrixStats lognorm = f.matrix("layers/lognorm_source").scan_stats();
  EXPECT_FALSE(lognorm.integer_valued);
}

}  // namespace

namespace {

TEST(Reader, Anndata07CategoricalsByObjectReference) {
  // Written by a real anndata 0.7.8 (scripts/make_fixture_anndata07.py): codes whose
  // `categories` attribute references __categories/<column>.
  H5adFile f = H5adFile::open(std::string(SCTRAIN_SOURCE_DIR) + "/tests/fixtures/pbmc68k_anndata07.h5ad");
  EXPECT_EQ(f.format(), Format::Anndata07);
  EXPECT_EQ(f.n_obs(), 50);
  Dataframe obs = f.obs();
  ASSERT_EQ(obs.columns.size(), 3u);  // __categories is not a column
  const Column* ct = obs.find("cell_type");
  ASSERT_TRUE(ct);
  EXPECT_EQ(ct->type, ColumnType::Categorical);
  EXPECT_EQ(ct->categories.size(), 10u);
  EXPECT_EQ(ct->text(0), "CD14+ Monocyte");
  EXPECT_EQ(obs.find("phase")->text(49), "G1");
  EXPECT_EQ(obs.find("n_genes")->text(0), "1003");
  EXPECT_EQ(obs.index.back(), "GAGGATCTGGAGGT-1");
  EXPECT_NEAR(f.matrix("X").scan_stats().sum, 34560.0, 1e-9);
}

}  // namespace

namespace {

// Rows read directly (pread + our inflate) equal rows read through HDF5, for every layout:
// gzip chunks (pbmc3k, pbmc68k, legacy), plain chunks (scvelo), lzf (fixture).
TEST(Reader, DirectReadsEqualHdf5Reads) {
  const std::string fixture = std::string(SCTRAIN_SOURCE_DIR) + "/tests/fixtures/pbmc68k_csc_int64.h5ad";
  const std::pair<std::string, std::string> cases[] = {
      {project_data("pbmc3k_seurat.h5ad"), "X"},
      {project_data("pbmc68k_reduced.h5ad"), "layers/lognorm_source"},
      {project_data("orig_scvelo_pancreas_50obs.h5ad"), "layers/unspliced"},
      {project_data("orig_scanpy_pbmc68k_reduced_legacy.h5ad"), "raw/X"},
      {fixture, "raw/X"},
      {fixture, "layers/counts_csr_uint16"}};
  std::mt19937 rng(3);
  for (const auto& [path, matrix] : cases) {
    SCOPED_TRACE(path + " " + matrix);
    H5adFile f = H5adFile::open(path);
    std::vector<int64_t> rows(200);
    for (auto& r : rows) r = std::uniform_int_distribution<int64_t>(0, f.n_obs() - 1)(rng);
    Matrix direct = f.matrix(matrix, true), hdf5 = f.matrix(matrix, false);
    expect_same_rows(direct.read_rows(rows), hdf5.read_rows(rows));
    expect_same_rows(direct.read_rows(0, f.n_obs()), hdf5.read_rows(0, f.n_obs()));
  }
}

}  // namespace
