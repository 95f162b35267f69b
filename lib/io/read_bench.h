// `sctrain bench read`: cells/s, MB/s and peak memory of reading batches of cells.
#pragma once
#include <cstdint>
#include <string>

namespace sctrain::io {

struct ReadBenchOptions {
  std::string file;
  std::string matrix = "X";
  std::string mode = "random";  // "sequential" (consecutive batches over the file) or "random"
  int64_t batch = 256;
  int64_t batches = 200;        // random mode; sequential reads the whole matrix
  uint64_t seed = 0;
  bool json = false;
};

int run_read_bench(const ReadBenchOptions& o);

}  // namespace sctrain::io
