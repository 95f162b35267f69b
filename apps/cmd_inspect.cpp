// sctrain inspect: what is in an .h5ad file.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "command.h"
#include "io/h5ad.h"
#include "util/json.h"
#include "util/log.h"

namespace sctrain::app {
namespace {

struct InspectOptions {
  std::string file;
  bool json = false;
  bool stats = false;
};

struct MatrixReport {
  io::MatrixInfo info;
  std::optional<io::MatrixStats> stats;
  double seconds = 0;
};

struct CellEntrySummary {
  double mean = 0;
  int64_t min = 0, max = 0;
};

CellEntrySummary summarize(const std::vector<int64_t>& v) {
  CellEntrySummary s;
  if (v.empty()) return s;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  double total = 0;
  for (int64_t x : v) total += static_cast<double>(x);
  s.mean = total / static_cast<double>(v.size());
  return s;
}

std::vector<std::string> head(const std::vector<std::string>& v, size_t n = 3) {
  return {v.begin(), v.begin() + std::min(n, v.size())};
}

void write_columns(json::Writer& w, const io::Dataframe& df) {
  w.begin_object();
  for (const auto& c : df.columns) {
    w.key(c.name).begin_object().field("type", io::column_type_name(c.type));
    if (c.type == io::ColumnType::Categorical)
      w.field("n_categories", static_cast<int64_t>(c.categories.size()));
    w.end_object();
  }
  w.end_object();
}

std::string to_json(const io::H5adFile& f, const std::vector<MatrixReport>& mats, const io::Dataframe& obs,
                    const io::Dataframe& var) {
  json::Writer w;
  w.begin_object()
      .field("file", f.path())
      .field("n_obs", f.n_obs())
      .field("n_vars", f.n_vars())
      .field("format", io::format_name(f.format()));
  w.key("matrices").begin_object();
  for (const auto& m : mats) {
    w.key(m.info.name).begin_object();
    w.field("encoding", io::encoding_name(m.info.encoding)).field("dtype", m.info.dtype);
    w.key("shape").begin_array().value(m.info.n_rows).value(m.info.n_cols).end_array();
    w.field("nnz", m.info.nnz);
    if (m.stats) {
      const auto& s = *m.stats;
      auto ce = summarize(s.cell_entries);
      w.field("sum", s.sum).field("min", s.min).field("max", s.max).field("integer_valued", s.integer_valued);
      w.key("cell_entries").begin_object().field("mean", ce.mean).field("min", ce.min).field("max", ce.max).end_object();
    }
    w.end_object();
  }
  w.end_object();
  w.key("obs");
  write_columns(w, obs);
  w.key("var");
  write_columns(w, var);
  w.field("obs_names_head", head(obs.index)).field("var_names_head", head(var.index));
  w.end_object();
  return w.str();
}

void print_text(const io::H5adFile& f, const std::vector<MatrixReport>& mats, const io::Dataframe& obs,
                const io::Dataframe& var) {
  auto names = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  std::printf("%s\n", f.path().c_str());
  std::printf("  %lld cells x %lld genes, written by %s\n", static_cast<long long>(f.n_obs()),
              static_cast<long long>(f.n_vars()), io::format_name(f.format()));
  std::printf("  matrices:\n");
  for (const auto& m : mats) {
    const auto& i = m.info;
    std::printf("    %-22s %-10s %-8s %lld x %lld", i.name.c_str(), io::encoding_name(i.encoding), i.dtype.c_str(),
                static_cast<long long>(i.n_rows), static_cast<long long>(i.n_cols));
    if (i.nnz)
      std::printf(", %lld stored (%.1f%%)", static_cast<long long>(*i.nnz),
                  100.0 * static_cast<double>(*i.nnz) / std::max<double>(1.0, double(i.n_rows) * double(i.n_cols)));
    std::printf("\n");
    if (m.stats) {
      auto ce = summarize(m.stats->cell_entries);
      std::printf("      sum %.6g, min %.6g, max %.6g, %s; entries per cell mean %.1f, min %lld, max %lld (%.2fs)\n",
                  m.stats->sum, m.stats->min, m.stats->max,
                  m.stats->integer_valued ? "integer-valued (counts)" : "not integer-valued", ce.mean,
                  static_cast<long long>(ce.min), static_cast<long long>(ce.max), m.seconds);
    }
  }
  auto print_df = [](const char* what, const io::Dataframe& df) {
    std::printf("  %s: %zu rows, index '%s', %zu columns\n", what, df.index.size(), df.index_name.c_str(),
                df.columns.size());
    for (const auto& c : df.columns) {
      std::printf("    %-22s %s", c.name.c_str(), io::column_type_name(c.type));
      if (c.type == io::ColumnType::Categorical) {
        std::printf(" (%zu categories:", c.categories.size());
        for (size_t k = 0; k < std::min<size_t>(4, c.categories.size()); ++k)
          std::printf(" %s%s", c.categories[k].c_str(), k + 1 < std::min<size_t>(4, c.categories.size()) ? "," : "");
        std::printf("%s)", c.categories.size() > 4 ? ", ..." : "");
      }
      std::printf("\n");
    }
  };
  print_df("obs", obs);
  print_df("var", var);
  std::printf("  obs_names: %s ...\n  var_names: %s ...\n", names(head(obs.index)).c_str(),
              names(head(var.index)).c_str());
}

int run_inspect(const InspectOptions& o) {
  io::H5adFile f = io::H5adFile::open(o.file);
  std::vector<MatrixReport> mats;
  for (const auto& name : f.matrix_names()) {
    io::Matrix m = f.matrix(name);
    MatrixReport r{m.info(), std::nullopt, 0};
    if (o.stats) {
      log::info(str("scanning ", name, " (", m.info().n_rows, " x ", m.info().n_cols, ")"));
      auto t0 = std::chrono::steady_clock::now();
      r.stats = m.scan_stats();
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    mats.push_back(std::move(r));
  }
  io::Dataframe obs = f.obs(), var = f.var();
  if (o.json)
    std::cout << to_json(f, mats, obs, var) << "\n";
  else
    print_text(f, mats, obs, var);
  return 0;
}

SCTRAIN_COMMAND({"inspect", "Summarize an .h5ad file: shape, matrices, obs/var columns (--json, --stats)", 10,
                 [](CLI::App& cmd) {
                   auto o = std::make_shared<InspectOptions>();
                   cmd.footer(
                       "Reads any anndata version's layout (0.8+, 0.7, <= 0.6) and lists X, raw/X and layers\n"
                       "with encoding, dtype, shape and stored entries, then the obs/var columns.\n"
                       "--stats scans every matrix once (bounded memory) for sum, min, max, whether values\n"
                       "are whole numbers (raw counts) and stored entries per cell.\n"
                       "Reading cells reads only those cells, except from a CSC matrix (genes stored together):\n"
                       "there any read of cells scans the whole matrix once, in bounded slabs.\n\n"
                       "Examples:\n"
                       "  sctrain inspect data/pbmc3k_seurat.h5ad\n"
                       "  sctrain inspect data/pbmc3k_seurat.h5ad --json --stats | python3 -m json.tool");
                   cmd.add_option("file", o->file, "the .h5ad file")->required();
                   cmd.add_flag("--json", o->json, "print one JSON object instead of text");
                   cmd.add_flag("--stats", o->stats, "scan each matrix once: sum, min, max, counts, entries per cell");
                   return [o] { return run_inspect(*o); };
                 }});

}  // namespace
}  // namespace sctrain::app
