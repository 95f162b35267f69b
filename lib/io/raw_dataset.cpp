#include "io/raw_dataset.h"

#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "io/hdf5_util.h"

namespace sctrain::io {

std::optional<RawDataset> RawDataset::probe(hid_t dset, std::shared_ptr<const int> fd) {
  using h5::Handle;
  RawDataset r;
  r.fd_ = std::move(fd);
  Handle type(H5Dget_type(dset));
  H5T_class_t cls = H5Tget_class(type.get());
  if (cls == H5T_FLOAT) {
    r.kind_ = Kind::Float;
    // Only IEEE single and double.
    if (H5Tequal(type.get(), H5T_IEEE_F32LE) <= 0 && H5Tequal(type.get(), H5T_IEEE_F64LE) <= 0) return std::nullopt;
  } else if (cls == H5T_INTEGER) {
    if (H5Tget_order(type.get()) != H5T_ORDER_LE) return std::nullopt;
    r.kind_ = H5Tget_sign(type.get()) == H5T_SGN_NONE ? Kind::Unsigned : Kind::Signed;
  } else {
    return std::nullopt;
  }
  r.elem_size_ = H5Tget_size(type.get());
  auto dims = h5::shape(dset);
  if (dims.size() != 1) return std::nullopt;
  r.n_ = static_cast<int64_t>(dims[0]);

  Handle dcpl(H5Dget_create_plist(dset));
  H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (layout == H5D_CONTIGUOUS) {
    r.base_ = H5Dget_offset(dset);
    if (r.base_ == HADDR_UNDEF && r.n_ > 0) return std::nullopt;
    return r;
  }
  if (layout != H5D_CHUNKED || H5Pget_nfilters(dcpl.get()) > 0) return std::nullopt;
  hsize_t chunk = 0;
  if (H5Pget_chunk(dcpl.get(), 1, &chunk) != 1 || chunk == 0) return std::nullopt;
  r.chunk_len_ = static_cast<int64_t>(chunk);
  const int64_t n_chunks = (r.n_ + r.chunk_len_ - 1) / r.chunk_len_;
  if (n_chunks > (1 << 22)) return std::nullopt;  // index too large to hold: read through HDF5
  r.chunk_addr_.assign(static_cast<size_t>(n_chunks), HADDR_UNDEF);
  for (int64_t c = 0; c < n_chunks; ++c) {
    hsize_t offset = static_cast<hsize_t>(c * r.chunk_len_);
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    hsize_t size = 0;
    if (H5Dget_chunk_info_by_coord(dset, &offset, &mask, &addr, &size) < 0) {
      h5::last_error();
      return std::nullopt;
    }
    if (mask != 0) return std::nullopt;
    r.chunk_addr_[c] = addr;
  }
  return r;
}

namespace {

template <typename T, typename S>
void convert(const unsigned char* src, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    S v;
    std::memcpy(&v, src + i * sizeof(S), sizeof(S));
    out[i] = static_cast<T>(v);
  }
}

void pread_all(int fd, unsigned char* buf, size_t bytes, haddr_t at) {
  while (bytes > 0) {
    ssize_t got = ::pread(fd, buf, bytes, static_cast<off_t>(at));
    if (got <= 0) throw std::runtime_error("short read at byte " + std::to_string(at) + " (truncated file?)");
    buf += got;
    bytes -= static_cast<size_t>(got);
    at += static_cast<haddr_t>(got);
  }
}

}  // namespace

template <typename T>
void RawDataset::read(int64_t start, int64_t count, T* out) const {
  if (start < 0 || count < 0 || start + count > n_) throw std::runtime_error("range out of bounds");
  thread_local std::vector<unsigned char> buf;
  auto piece = [&](haddr_t addr, int64_t n, T* dst) {
    if (addr == HADDR_UNDEF) {
      std::fill(dst, dst + n, T(0));
      return;
    }
    const bool same = sizeof(T) == elem_size_ && (kind_ == Kind::Float) == std::is_floating_point_v<T> &&
                      (kind_ != Kind::Unsigned || !std::is_signed_v<T>);
    if (same) {  // the file holds exactly T: read in place
      pread_all(*fd_, reinterpret_cast<unsigned char*>(dst), static_cast<size_t>(n) * sizeof(T), addr);
      return;
    }
    buf.resize(static_cast<size_t>(n) * elem_size_);
    pread_all(*fd_, buf.data(), buf.size(), addr);
    const unsigned char* s = buf.data();
    switch (kind_) {
      case Kind::Float:
        if (elem_size_ == 4) convert<T, float>(s, n, dst);
        else convert<T, double>(s, n, dst);
        break;
      case Kind::Signed:
        if (elem_size_ == 1) convert<T, int8_t>(s, n, dst);
        else if (elem_size_ == 2) convert<T, int16_t>(s, n, dst);
        else if (elem_size_ == 4) convert<T, int32_t>(s, n, dst);
        else convert<T, int64_t>(s, n, dst);
        break;
      case Kind::Unsigned:
        if (elem_size_ == 1) convert<T, uint8_t>(s, n, dst);
        else if (elem_size_ == 2) convert<T, uint16_t>(s, n, dst);
        else if (elem_size_ == 4) convert<T, uint32_t>(s, n, dst);
        else convert<T, uint64_t>(s, n, dst);
        break;
    }
  };
  if (chunk_len_ == 0) {
    piece(base_ + static_cast<haddr_t>(start) * elem_size_, count, out);
    return;
  }
  while (count > 0) {
    int64_t c = start / chunk_len_, within = start % chunk_len_;
    int64_t n = std::min(count, chunk_len_ - within);
    haddr_t addr = chunk_addr_[c];
    piece(addr == HADDR_UNDEF ? addr : addr + static_cast<haddr_t>(within) * elem_size_, n, out);
    start += n;
    count -= n;
    out += n;
  }
}

template void RawDataset::read<float>(int64_t, int64_t, float*) const;
template void RawDataset::read<int32_t>(int64_t, int64_t, int32_t*) const;
template void RawDataset::read<int64_t>(int64_t, int64_t, int64_t*) const;

}  // namespace sctrain::io
