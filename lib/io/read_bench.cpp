#include "io/read_bench.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <random>

#include "io/h5ad.h"
#include "util/json.h"

namespace sctrain::io {
namespace {

// Peak resident memory of this process (VmHWM; ru_maxrss would carry a parent's peak over exec).
double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  return 0;
}

}  // namespace

int run_read_bench(const ReadBenchOptions& o) {
  const double rss_before = peak_rss_mb();
  const auto opening = std::chrono::steady_clock::now();
  H5adFile f = H5adFile::open(o.file);
  Matrix m = f.matrix(o.matrix);  // its row index and the chunk index of data and indices
  const double open_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - opening).count();
  const int64_t n = m.info().n_rows;
  int64_t cells = 0, entries = 0;
  auto t0 = std::chrono::steady_clock::now();
  if (o.mode == "sequential") {
    for (int64_t b = 0; b < n; b += o.batch) {
      CellRows r = m.read_rows(b, std::min(n, b + o.batch));
      cells += r.n_rows();
      entries += static_cast<int64_t>(r.values.size());
    }
  } else if (o.mode == "random") {
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    std::vector<int64_t> rows(o.batch);
    for (int64_t i = 0; i < o.batches; ++i) {
      for (auto& r : rows) r = pick(rng);
      CellRows r = m.read_rows(rows);
      cells += r.n_rows();
      entries += static_cast<int64_t>(r.values.size());
    }
  } else {
    throw std::invalid_argument("--mode must be sequential or random, not '" + o.mode + "'");
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Bytes as stored: values of the file's dtype plus column indices (4 bytes each, as read).
  const double value_bytes = m.info().dtype.find("64") != std::string::npos ? 8 : 4;
  const double mb = static_cast<double>(entries) * (value_bytes + 4) / 1e6;
  json::Writer w;
  w.begin_object()
      .field("reader", "sctrain")
      .field("mode", o.mode)
      .field("batch", o.batch)
      .field("cells", cells)
      .field("entries", entries)
      .field("seconds", secs)
      .field("open_seconds", open_secs)
      .field("cells_per_s", cells / secs)
      .field("mb_per_s", mb / secs)
      .field("peak_rss_mb", peak_rss_mb())
      .field("rss_before_mb", rss_before)
      .end_object();
  if (o.json) {
    std::printf("%s\n", w.str().c_str());
  } else {
    std::printf("%s opened in %.3f s; %s batches of %lld: %lld cells in %.2f s = %.0f cells/s, %.1f MB/s, peak RSS %.0f MB\n",
                o.file.c_str(), open_secs, o.mode.c_str(), static_cast<long long>(o.batch), static_cast<long long>(cells),
                secs, cells / secs, mb / secs, peak_rss_mb());
  }
  return 0;
}

}  // namespace sctrain::io
