#include "io/raw_dataset.h"

#include <unistd.h>
#ifdef SCTRAIN_HAVE_LIBDEFLATE
#include <libdeflate.h>
#else
#include <zlib.h>
#endif

#include <algorithm>
#include <cstring>
#include <list>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "io/chunk_index.h"
#include "io/file_bytes.h"
#include "io/hdf5_util.h"
#include "io/lzf_filter.h"

namespace sctrain::io {

namespace {
thread_local int serial_inflate_depth = 0;  // > 0: this thread's reads inflate on this thread
}
SerialInflate::SerialInflate() { ++serial_inflate_depth; }
SerialInflate::~SerialInflate() { --serial_inflate_depth; }

constexpr int kLzfFilter = 32000;
constexpr size_t kChunkCacheBytes = 64ull << 20;  // inflated chunks kept per dataset

// Least-recently-used inflated chunks, shared by the threads reading one dataset.
struct RawDataset::ChunkCache {
  std::mutex mutex;
  std::list<int64_t> order;  // front: most recent
  std::unordered_map<int64_t, std::pair<Chunk, std::list<int64_t>::iterator>> map;
  size_t bytes = 0;

  Chunk get(int64_t c) {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = map.find(c);
    if (it == map.end()) return nullptr;
    order.splice(order.begin(), order, it->second.second);
    return it->second.first;
  }
  void put(int64_t c, const Chunk& chunk) {
    std::lock_guard<std::mutex> lock(mutex);
    if (map.count(c)) return;
    order.push_front(c);
    map.emplace(c, std::make_pair(chunk, order.begin()));
    bytes += chunk->size();
    while (bytes > kChunkCacheBytes && order.size() > 1) {
      auto last = map.find(order.back());
      bytes -= last->second.first->size();
      map.erase(last);
      order.pop_back();
    }
  }
};

std::optional<RawDataset> RawDataset::probe(hid_t dset, std::shared_ptr<const int> fd, bool vlen_strings) {
  using h5::Handle;
  RawDataset r;
  r.fd_ = std::move(fd);
  Handle type(H5Dget_type(dset));
  H5T_class_t cls = H5Tget_class(type.get());
  if (vlen_strings) {
    // Stored as 16-byte references: length (4), global heap collection address (8), object index (4).
    if (cls != H5T_STRING || H5Tis_variable_str(type.get()) <= 0 || !plain_file_addresses(dset)) return std::nullopt;
    r.kind_ = Kind::Bytes;
  } else if (cls == H5T_FLOAT) {
    r.kind_ = Kind::Float;
    // Only IEEE single and double.
    if (H5Tequal(type.get(), H5T_IEEE_F32LE) <= 0 && H5Tequal(type.get(), H5T_IEEE_F64LE) <= 0) return std::nullopt;
  } else if (cls == H5T_INTEGER) {
    if (H5Tget_order(type.get()) != H5T_ORDER_LE) return std::nullopt;
    r.kind_ = H5Tget_sign(type.get()) == H5T_SGN_NONE ? Kind::Unsigned : Kind::Signed;
  } else {
    return std::nullopt;
  }
  r.elem_size_ = r.kind_ == Kind::Bytes ? 16 : H5Tget_size(type.get());
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
  if (layout != H5D_CHUNKED) return std::nullopt;
  for (int i = 0, n = H5Pget_nfilters(dcpl.get()); i < n; ++i) {
    unsigned flags = 0, config = 0;
    size_t nelmts = 0;
    char name[64];
    H5Z_filter_t f = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &nelmts, nullptr,
                                    sizeof name, name, &config);
    if (f != H5Z_FILTER_DEFLATE && f != kLzfFilter) return std::nullopt;  // e.g. shuffle: HDF5 reads it
    r.filters_.push_back(static_cast<int>(f));
  }
  hsize_t chunk = 0;
  if (H5Pget_chunk(dcpl.get(), 1, &chunk) != 1 || chunk == 0) return std::nullopt;
  r.chunk_len_ = static_cast<int64_t>(chunk);
  const int64_t n_chunks = (r.n_ + r.chunk_len_ - 1) / r.chunk_len_;
  if (n_chunks > (1 << 22)) return std::nullopt;  // index too large to hold: read through HDF5
  std::optional<ChunkIndex> index = read_chunk_index(dset, *r.fd_, r.chunk_len_, n_chunks);
  if (!index) return std::nullopt;
  if (r.filters_.empty())
    for (unsigned m : index->mask)
      if (m != 0) return std::nullopt;
  r.chunk_addr_ = std::move(index->addr);
  r.chunk_bytes_ = std::move(index->bytes);
  r.chunk_mask_ = std::move(index->mask);
  if (!r.filters_.empty()) r.cache_ = std::make_shared<ChunkCache>();
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

// Inflates a zlib stream (HDF5's deflate filter) into out[0, cap); returns the inflated length.
size_t inflate_zlib(const unsigned char* in, size_t n, unsigned char* out, size_t cap, int64_t chunk) {
#ifdef SCTRAIN_HAVE_LIBDEFLATE
  struct Free {
    void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
  };
  thread_local std::unique_ptr<libdeflate_decompressor, Free> d(libdeflate_alloc_decompressor());
  if (!d) throw std::bad_alloc();
  size_t len = 0;
  if (libdeflate_zlib_decompress(d.get(), in, n, out, cap, &len) != LIBDEFLATE_SUCCESS)
    throw std::runtime_error("corrupt deflate chunk " + std::to_string(chunk));
  return len;
#else
  uLongf len = static_cast<uLongf>(cap);
  if (uncompress(out, &len, in, static_cast<uLong>(n)) != Z_OK)
    throw std::runtime_error("corrupt deflate chunk " + std::to_string(chunk));
  return len;
#endif
}

void pread_all(int fd, unsigned char* buf, size_t bytes, haddr_t at) {
  if (!pread_exact(fd, at, bytes, buf))
    throw std::runtime_error("short read at byte " + std::to_string(at) + " (truncated file?)");
}

}  // namespace

void RawDataset::decode_chunk(int64_t c, unsigned char* dst) const {
  const size_t full = static_cast<size_t>(chunk_len_) * elem_size_;
  if (chunk_addr_[c] == HADDR_UNDEF) {
    std::memset(dst, 0, full);
    return;
  }
  thread_local std::vector<unsigned char> stored, mid[2];
  stored.resize(chunk_bytes_[c]);
  pread_all(*fd_, stored.data(), stored.size(), chunk_addr_[c]);
  // Filters undo in reverse pipeline order; a set mask bit means the filter was skipped.
  std::vector<int> undo;
  for (int i = static_cast<int>(filters_.size()) - 1; i >= 0; --i)
    if (!(chunk_mask_[c] & (1u << i))) undo.push_back(filters_[i]);
  const unsigned char* src = stored.data();
  size_t len = stored.size();
  for (size_t k = 0; k < undo.size(); ++k) {
    unsigned char* to = dst;  // the last filter writes straight into dst
    if (k + 1 < undo.size()) {
      mid[k % 2].resize(full);
      to = mid[k % 2].data();
    }
    if (undo[k] == H5Z_FILTER_DEFLATE) {
      len = inflate_zlib(src, len, to, full, c);
    } else {
      len = lzf_decompress(src, len, to, full);
      if (len == 0) throw std::runtime_error("corrupt lzf chunk " + std::to_string(c));
    }
    src = to;
  }
  if (len < full) throw std::runtime_error("chunk " + std::to_string(c) + " inflates short");
  if (undo.empty()) std::memcpy(dst, src, full);
}

RawDataset::Chunk RawDataset::load_chunk(int64_t c) const {
  if (Chunk hit = cache_->get(c)) return hit;
  auto out = std::make_shared<std::vector<unsigned char>>(static_cast<size_t>(chunk_len_) * elem_size_);
  decode_chunk(c, out->data());
  cache_->put(c, out);
  return out;
}

template <typename T>
void RawDataset::read(const std::vector<std::pair<int64_t, int64_t>>& ranges, T* out) const {
  for (auto [start, count] : ranges)
    if (start < 0 || count < 0 || start + count > n_) throw std::runtime_error("range out of bounds");
  auto convert_to = [&](const unsigned char* s, int64_t n, T* dst) {
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
      case Kind::Bytes:
        throw std::logic_error("RawDataset::read on stored references (use read_bytes)");
    }
  };
  const bool same = sizeof(T) == elem_size_ && (kind_ == Kind::Float) == std::is_floating_point_v<T> &&
                    (kind_ != Kind::Unsigned || !std::is_signed_v<T>);

  if (filters_.empty()) {  // plain storage: one pread per piece
    thread_local std::vector<unsigned char> buf;
    auto piece = [&](haddr_t addr, int64_t n, T* dst) {
      if (addr == HADDR_UNDEF) {
        std::fill(dst, dst + n, T(0));
      } else if (same) {  // the file holds exactly T: read in place
        pread_all(*fd_, reinterpret_cast<unsigned char*>(dst), static_cast<size_t>(n) * sizeof(T), addr);
      } else {
        buf.resize(static_cast<size_t>(n) * elem_size_);
        pread_all(*fd_, buf.data(), buf.size(), addr);
        convert_to(buf.data(), n, dst);
      }
    };
    for (auto [start, count] : ranges) {
      if (chunk_len_ == 0) {
        piece(base_ + static_cast<haddr_t>(start) * elem_size_, count, out);
        out += count;
        continue;
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
    return;
  }

  // Compressed: decode every chunk the ranges touch, in parallel, then copy out of them. A
  // chunk that one range alone needs whole (a sequential scan's middle chunks) is decoded
  // straight into the output, bypassing the cache, when no conversion is needed.
  struct Need {
    int64_t chunk;
    T* whole;  // where the whole chunk goes in the output, or null
  };
  std::vector<Need> needs;
  {
    T* dst = out;
    for (auto [start, count] : ranges) {
      for (int64_t c = start / chunk_len_; count > 0 && c <= (start + count - 1) / chunk_len_; ++c) {
        const bool whole = same && c * chunk_len_ >= start && (c + 1) * chunk_len_ <= start + count;
        needs.push_back({c, whole ? dst + (c * chunk_len_ - start) : nullptr});
      }
      dst += count;
    }
  }
  std::sort(needs.begin(), needs.end(), [](const Need& a, const Need& b) { return a.chunk < b.chunk; });
  std::vector<int64_t> ids;
  std::vector<T*> whole;  // per id: straight into the output (needed once, whole), else null
  for (size_t i = 0; i < needs.size(); ++i) {
    if (!ids.empty() && ids.back() == needs[i].chunk) {
      whole.back() = nullptr;  // needed twice: through the cache
      continue;
    }
    ids.push_back(needs[i].chunk);
    whole.push_back(needs[i].whole);
  }
  std::vector<Chunk> chunks(ids.size());
  auto decode = [&](size_t i) {
    if (whole[i]) {
      if (Chunk hit = cache_->get(ids[i])) chunks[i] = hit;
      else decode_chunk(ids[i], reinterpret_cast<unsigned char*>(whole[i]));
    } else {
      chunks[i] = load_chunk(ids[i]);
    }
  };
  const size_t n_threads = serial_inflate_depth > 0 ? 1 : std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()), (ids.size() + 3) / 4);
  if (n_threads <= 1) {
    for (size_t i = 0; i < ids.size(); ++i) decode(i);
  } else {
    std::vector<std::thread> pool;
    std::exception_ptr error;
    std::mutex error_mutex;
    for (size_t t = 0; t < n_threads; ++t)
      pool.emplace_back([&, t] {
        try {
          for (size_t i = t; i < ids.size(); i += n_threads) decode(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          error = std::current_exception();
        }
      });
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
  }
  for (auto [start, count] : ranges) {
    while (count > 0) {
      int64_t c = start / chunk_len_, within = start % chunk_len_;
      int64_t n = std::min(count, chunk_len_ - within);
      const size_t i = std::lower_bound(ids.begin(), ids.end(), c) - ids.begin();
      if (chunks[i]) {  // else decoded in place already
        const unsigned char* src = chunks[i]->data() + static_cast<size_t>(within) * elem_size_;
        if (same) std::memcpy(out, src, static_cast<size_t>(n) * sizeof(T));
        else convert_to(src, n, out);
      }
      start += n;
      count -= n;
      out += n;
    }
  }
}

void RawDataset::read_bytes(int64_t start, int64_t count, unsigned char* out) const {
  if (start < 0 || count < 0 || start + count > n_) throw std::runtime_error("range out of bounds");
  const size_t es = elem_size_;
  if (chunk_len_ == 0) {
    pread_all(*fd_, out, static_cast<size_t>(count) * es, base_ + static_cast<haddr_t>(start) * es);
    return;
  }
  std::vector<unsigned char> chunk(static_cast<size_t>(chunk_len_) * es);
  while (count > 0) {
    const int64_t c = start / chunk_len_, within = start % chunk_len_;
    const int64_t n = std::min(count, chunk_len_ - within);
    decode_chunk(c, chunk.data());
    std::memcpy(out, chunk.data() + static_cast<size_t>(within) * es, static_cast<size_t>(n) * es);
    start += n;
    count -= n;
    out += static_cast<size_t>(n) * es;
  }
}

template void RawDataset::read<float>(const std::vector<std::pair<int64_t, int64_t>>&, float*) const;
template void RawDataset::read<int32_t>(const std::vector<std::pair<int64_t, int64_t>>&, int32_t*) const;
template void RawDataset::read<int64_t>(const std::vector<std::pair<int64_t, int64_t>>&, int64_t*) const;

}  // namespace sctrain::io
