#include "io/chunk_index.h"

#include <cstring>

#include "io/file_bytes.h"
#include "io/hdf5_util.h"

namespace sctrain::io {

bool plain_file_addresses(hid_t obj) {
  h5::Handle file(H5Iget_file_id(obj));
  h5::Handle fcpl(H5Fget_create_plist(file.get()));
  size_t sizeof_addr = 0, sizeof_size = 0;
  hsize_t userblock = 1;
  if (H5Pget_sizes(fcpl.get(), &sizeof_addr, &sizeof_size) < 0 || H5Pget_userblock(fcpl.get(), &userblock) < 0)
    return false;
  return sizeof_addr == 8 && sizeof_size == 8 && userblock == 0;
}

std::optional<ChunkIndex> chunk_index_by_api(hid_t dset, int64_t chunk_len, int64_t n_chunks) {
  ChunkIndex ix(n_chunks);
  for (int64_t c = 0; c < n_chunks; ++c) {
    hsize_t offset = static_cast<hsize_t>(c * chunk_len);
    if (H5Dget_chunk_info_by_coord(dset, &offset, &ix.mask[c], &ix.addr[c], &ix.bytes[c]) < 0) {
      h5::last_error();
      return std::nullopt;
    }
  }
  return ix;
}

namespace {

// Little-endian fields of a buffer read from the file; any read past its end fails the parse.
struct Bytes {
  std::vector<unsigned char> b;
  bool ok = true;
  uint64_t u(size_t at, size_t n) {
    if (at + n > b.size()) {
      ok = false;
      return 0;
    }
    return read_le(b.data() + at, n);
  }
};

bool read_at(int fd, uint64_t at, size_t n, Bytes& out) {
  out.b.resize(n);
  return pread_exact(fd, at, n, out.b.data());
}

std::optional<haddr_t> object_header_address(hid_t obj) {
#if H5_VERSION_GE(1, 12, 0)
  H5O_info2_t info;
  if (H5Oget_info3(obj, &info, H5O_INFO_BASIC) < 0) return std::nullopt;
  h5::Handle file(H5Iget_file_id(obj));
  haddr_t addr = HADDR_UNDEF;
  if (H5VLnative_token_to_addr(file.get(), info.token, &addr) < 0) return std::nullopt;
  return addr;
#else
  H5O_info_t info;
  if (H5Oget_info2(obj, &info, H5O_INFO_BASIC) < 0) return std::nullopt;
  return info.addr;
#endif
}

// The chunk B-tree's address from the data layout message (version 3, chunked, 1-D) of a
// version-1 object header, following continuation blocks.
std::optional<uint64_t> layout_btree_address(int fd, haddr_t header, int64_t chunk_len) {
  Bytes h;
  if (!read_at(fd, header, 16, h) || h.u(0, 1) != 1) return std::nullopt;  // version 1 only
  int64_t messages_left = static_cast<int64_t>(h.u(2, 2));
  std::vector<std::pair<uint64_t, uint64_t>> blocks{{header + 16, h.u(8, 4)}};
  for (size_t k = 0; k < blocks.size() && k < 64 && messages_left > 0; ++k) {
    Bytes m;
    if (blocks[k].second > (uint64_t{1} << 20) || !read_at(fd, blocks[k].first, blocks[k].second, m)) return std::nullopt;
    for (size_t at = 0; at + 8 <= m.b.size() && messages_left > 0; --messages_left) {
      const uint64_t type = m.u(at, 2), size = m.u(at + 2, 2);
      const size_t data = at + 8;
      if (data + size > m.b.size()) return std::nullopt;
      if (type == 0x10) {  // continuation: offset, length
        blocks.emplace_back(m.u(data, 8), m.u(data + 8, 8));
      } else if (type == 0x08) {  // data layout
        if (m.u(data, 1) != 3 || m.u(data + 1, 1) != 2 || m.u(data + 2, 1) != 2) return std::nullopt;
        const uint64_t btree = m.u(data + 3, 8);
        if (!m.ok || m.u(data + 11, 4) != static_cast<uint64_t>(chunk_len)) return std::nullopt;
        return btree;
      }
      at = data + size;
    }
  }
  return std::nullopt;
}

// Walks a version-1 B-tree of raw-data chunks (1-D: keys hold size, filter mask and the
// offsets of 2 dimensions, the second the element's bytes, always 0).
bool walk_btree(int fd, uint64_t node, int depth, int64_t chunk_len, ChunkIndex& ix, int64_t& found) {
  constexpr size_t kKey = 4 + 4 + 2 * 8;
  Bytes h;
  if (depth > 32 || !read_at(fd, node, 24, h) || std::memcmp(h.b.data(), "TREE", 4) != 0 || h.u(4, 1) != 1)
    return false;
  const uint64_t level = h.u(5, 1), entries = h.u(6, 2);
  Bytes body;
  if (!read_at(fd, node + 24, (entries + 1) * kKey + entries * 8, body)) return false;
  for (uint64_t i = 0; i < entries; ++i) {
    const size_t key = i * (kKey + 8);
    const uint64_t child = body.u(key + kKey, 8);
    if (level > 0) {
      if (!walk_btree(fd, child, depth + 1, chunk_len, ix, found)) return false;
      continue;
    }
    const uint64_t offset = body.u(key + 8, 8);
    const uint64_t c = offset / static_cast<uint64_t>(chunk_len);
    if (offset % static_cast<uint64_t>(chunk_len) != 0 || c >= ix.addr.size() || ix.addr[c] != HADDR_UNDEF ||
        body.u(key + 16, 8) != 0 || child == HADDR_UNDEF)
      return false;
    ix.bytes[c] = body.u(key, 4);
    ix.mask[c] = static_cast<unsigned>(body.u(key + 4, 4));
    ix.addr[c] = child;
    ++found;
  }
  return body.ok;
}

}  // namespace

std::optional<ChunkIndex> chunk_index_from_btree(hid_t dset, int fd, int64_t chunk_len, int64_t n_chunks) {
  if (chunk_len <= 0 || n_chunks <= 0 || !plain_file_addresses(dset)) return std::nullopt;
  const std::optional<haddr_t> header = object_header_address(dset);
  if (!header) return std::nullopt;
  const std::optional<uint64_t> root = layout_btree_address(fd, *header, chunk_len);
  if (!root) return std::nullopt;
  ChunkIndex ix(n_chunks);
  int64_t found = 0;
  if (*root != HADDR_UNDEF && !walk_btree(fd, *root, 0, chunk_len, ix, found)) return std::nullopt;
  // HDF5 must agree on how many chunks are written (none skipped) and on the first and the
  // last chunk (addresses relative to the same base).
  {
    h5::Handle space(H5Dget_space(dset));
    hsize_t written = 0;
    if (H5Dget_num_chunks(dset, space.get(), &written) < 0) {
      h5::last_error();
      return std::nullopt;
    }
    if (static_cast<int64_t>(written) != found) return std::nullopt;
  }
  for (const int64_t c : {int64_t{0}, n_chunks - 1}) {
    hsize_t offset = static_cast<hsize_t>(c * chunk_len), bytes = 0;
    haddr_t addr = HADDR_UNDEF;
    unsigned mask = 0;
    if (H5Dget_chunk_info_by_coord(dset, &offset, &mask, &addr, &bytes) < 0) {
      h5::last_error();
      return std::nullopt;
    }
    if (addr != ix.addr[c] || (addr != HADDR_UNDEF && (bytes != ix.bytes[c] || mask != ix.mask[c]))) return std::nullopt;
  }
  return ix;
}

std::optional<ChunkIndex> read_chunk_index(hid_t dset, int fd, int64_t chunk_len, int64_t n_chunks) {
  if (auto ix = chunk_index_from_btree(dset, fd, chunk_len, n_chunks)) return ix;
  return chunk_index_by_api(dset, chunk_len, n_chunks);
}

}  // namespace sctrain::io
