#include "io/vlen_strings.h"

#include <cstring>
#include <memory>
#include <unordered_map>

#include "io/file_bytes.h"
#include "io/hdf5_util.h"
#include "io/raw_dataset.h"

namespace sctrain::io {

namespace {

// A global heap collection ("GCOL", version 1): its bytes and where each object's data lies.
struct Collection {
  std::vector<unsigned char> bytes;
  std::vector<std::pair<uint64_t, uint64_t>> objects;  // by object index: (offset, size); size 0 = none
  bool load(int fd, uint64_t addr) {
    unsigned char head[16];
    if (!pread_exact(fd, addr, 16, head) || std::memcmp(head, "GCOL", 4) != 0 || head[4] != 1) return false;
    const uint64_t size = read_le(head + 8, 8);
    if (size < 16 || size > (uint64_t{1} << 32)) return false;
    bytes.resize(size);
    if (!pread_exact(fd, addr, size, bytes.data())) return false;
    for (uint64_t at = 16; at + 16 <= size;) {
      const uint64_t index = read_le(bytes.data() + at, 2), obj = read_le(bytes.data() + at + 8, 8);
      if (index == 0) break;  // free space: the rest of the collection
      const uint64_t data = at + 16;
      if (obj > size - data) return false;
      if (index >= objects.size()) objects.resize(index + 1, {0, 0});
      objects[index] = {data, obj};
      at = data + ((obj + 7) & ~uint64_t{7});
    }
    return true;
  }
};

}  // namespace

std::optional<std::vector<std::string>> read_vlen_strings_direct(hid_t dset) {
  h5::Handle file(H5Iget_file_id(dset));
  h5::Handle fapl(H5Fget_access_plist(file.get()));
  if (H5Pget_driver(fapl.get()) != H5FD_SEC2) return std::nullopt;
  int* handle = nullptr;
  if (H5Fget_vfd_handle(file.get(), fapl.get(), reinterpret_cast<void**>(&handle)) < 0 || !handle) return std::nullopt;
  const int fd = *handle;
  // Not owned: HDF5 closes its file descriptor. probe checks the file's addresses (8 bytes, no
  // user block), as the references and heap collections below assume.
  const std::optional<RawDataset> raw = RawDataset::probe(dset, std::shared_ptr<const int>(handle, [](const int*) {}), true);
  if (!raw) return std::nullopt;
  const int64_t n = raw->size();
  std::vector<unsigned char> refs(static_cast<size_t>(n) * 16);
  try {
    raw->read_bytes(0, n, refs.data());
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::unordered_map<uint64_t, Collection> heaps;
  std::vector<std::string> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const unsigned char* r = refs.data() + i * 16;
    const uint64_t len = read_le(r, 4), addr = read_le(r + 4, 8), index = read_le(r + 12, 4);
    if (len == 0) continue;  // "" (a null reference or an empty string)
    auto it = heaps.find(addr);
    if (it == heaps.end()) {
      it = heaps.emplace(addr, Collection{}).first;
      if (!it->second.load(fd, addr)) return std::nullopt;
    }
    const Collection& c = it->second;
    if (index >= c.objects.size() || c.objects[index].second < len) return std::nullopt;
    const char* text = reinterpret_cast<const char*>(c.bytes.data() + c.objects[index].first);
    out[i].assign(text, strnlen(text, len));  // up to a NUL, as HDF5's C strings read
  }
  return out;
}

}  // namespace sctrain::io
