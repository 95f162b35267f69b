// HDF5 filter 32000 (LZF, as h5py and anndata write it): decompression only.
#pragma once
#include <cstddef>

namespace sctrain::io {

// Registers the filter with HDF5 once; safe to call repeatedly.
void register_lzf_filter();

// Decompresses LZF `in` into `out`; returns bytes written, or 0 when `out` is too small or the
// input is malformed.
size_t lzf_decompress(const unsigned char* in, size_t in_len, unsigned char* out, size_t out_cap);

}  // namespace sctrain::io
