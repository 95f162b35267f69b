#include "io/lzf_filter.h"

#include <hdf5.h>

#include <cstdlib>
#include <cstring>

namespace sctrain::io {

// LZF: a control byte c. c < 32: copy the next c+1 bytes. Else a back-reference of
// length (c >> 5) + 2 (length 7 extends by the next byte) at distance ((c & 31) << 8) + next + 1.
size_t lzf_decompress(const unsigned char* in, size_t in_len, unsigned char* out, size_t out_cap) {
  const unsigned char* ip = in;
  const unsigned char* in_end = in + in_len;
  unsigned char* op = out;
  unsigned char* out_end = out + out_cap;
  while (ip < in_end) {
    unsigned ctrl = *ip++;
    if (ctrl < 32) {
      size_t n = ctrl + 1;
      if (op + n > out_end || ip + n > in_end) return 0;
      std::memcpy(op, ip, n);
      op += n;
      ip += n;
    } else {
      size_t len = ctrl >> 5;
      if (len == 7) {
        if (ip >= in_end) return 0;
        len += *ip++;
      }
      if (ip >= in_end) return 0;
      size_t dist = ((ctrl & 0x1f) << 8) + *ip++ + 1;
      len += 2;
      if (op + len > out_end || dist > static_cast<size_t>(op - out)) return 0;
      const unsigned char* ref = op - dist;
      for (size_t i = 0; i < len; ++i) *op++ = *ref++;  // may overlap: byte by byte
    }
  }
  return static_cast<size_t>(op - out);
}

namespace {

size_t lzf_filter(unsigned flags, size_t cd_nelmts, const unsigned cd_values[], size_t nbytes,
                  size_t* buf_size, void** buf) {
  if (!(flags & H5Z_FLAG_REVERSE)) return 0;  // we only read
  // h5py stores the chunk's uncompressed size in cd_values[2]; grow if it is absent or short.
  size_t cap = (cd_nelmts >= 3 && cd_values[2] > 0) ? cd_values[2] : 4 * nbytes;
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto* out = static_cast<unsigned char*>(std::malloc(cap));
    if (!out) return 0;
    size_t n = lzf_decompress(static_cast<unsigned char*>(*buf), nbytes, out, cap);
    if (n > 0) {
      std::free(*buf);
      *buf = out;
      *buf_size = cap;
      return n;
    }
    std::free(out);
    cap *= 2;
  }
  return 0;
}

const H5Z_class2_t kLzfClass = {
    H5Z_CLASS_T_VERS, static_cast<H5Z_filter_t>(32000), 1, 1, "lzf (sctrain, decompress only)",
    nullptr,          nullptr,                          lzf_filter};

}  // namespace

void register_lzf_filter() {
  static const bool done = [] {
    if (H5Zfilter_avail(32000) <= 0) H5Zregister(&kLzfClass);
    return true;
  }();
  (void)done;
}

}  // namespace sctrain::io
