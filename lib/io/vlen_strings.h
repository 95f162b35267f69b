// Variable-length strings of a 1-D dataset (obs/var names and string columns) read straight
// from the file: HDF5 takes ~170 ns a string (27k of them, 5 ms, for PBMC 3k's var); here the
// dataset's stored references come through RawDataset (chunks, gzip) and each global heap
// collection they point into is read once with pread.
#pragma once
#include <hdf5.h>

#include <optional>
#include <string>
#include <vector>

namespace sctrain::io {

// nullopt where the dataset or file is not laid out as expected (another file driver, other
// address sizes, filters we do not undo, a reference or heap that does not check out): the
// caller reads through HDF5 then.
std::optional<std::vector<std::string>> read_vlen_strings_direct(hid_t dset);

}  // namespace sctrain::io
