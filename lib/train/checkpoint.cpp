#include "train/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "util/log.h"

namespace fs = std::filesystem;

namespace sctrain::train {

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%07lld", static_cast<long long>(step));
  return buf;
}

std::vector<CheckpointRef> list_checkpoints(const fs::path& dir) {
  std::vector<CheckpointRef> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step_", 0) != 0 || name.find('.') != std::string::npos)
      continue;
    try {
      size_t used = 0;
      int64_t step = std::stoll(name.substr(5), &used);
      if (used != name.size() - 5) continue;
      if (!fs::exists(e.path() / "meta.json")) continue;
      out.push_back({step, e.path()});
    } catch (const std::exception&) {
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return out;
}

std::optional<CheckpointRef> latest_checkpoint(const fs::path& dir) {
  auto all = list_checkpoints(dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

void remove_tree(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = ::opendir(path.c_str())) {
      std::vector<std::string> names;
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      ::closedir(d);
      for (const auto& n : names) remove_tree(path / n);
    }
    if (::rmdir(path.c_str()) != 0) throw std::runtime_error(str("cannot remove ", path.string()));
  } else if (::unlink(path.c_str()) != 0) {
    throw std::runtime_error(str("cannot remove ", path.string()));
  }
}

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | (fs::is_directory(path) ? O_DIRECTORY : 0));
  if (fd < 0) throw std::runtime_error(str("cannot open ", path.string(), " to fsync"));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error(str("fsync failed on ", path.string()));
}

fs::path write_checkpoint(const fs::path& dir, int64_t step,
                          const std::function<void(const fs::path&)>& write) {
  fs::create_directories(dir);
  const fs::path final_dir = dir / checkpoint_name(step);
  const fs::path tmp = dir / (checkpoint_name(step) + ".tmp");
  remove_tree(tmp);
  fs::create_directories(tmp);
  write(tmp);
  for (const auto& e : fs::directory_iterator(tmp))
    if (e.is_regular_file()) fsync_path(e.path());
  fsync_path(tmp);
  if (fs::exists(final_dir)) {  // the same step saved again (e.g. a resumed run that stops at once)
    const fs::path old = dir / (checkpoint_name(step) + ".old.tmp");
    remove_tree(old);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    remove_tree(old);
  } else {
    fs::rename(tmp, final_dir);
  }
  fsync_path(dir);
  return final_dir;
}

void prune_checkpoints(const fs::path& dir, int64_t keep) {
  auto all = list_checkpoints(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) remove_tree(all[i].dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".tmp") == 0) stale.push_back(e.path());
  }
  for (const auto& p : stale) remove_tree(p);
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error(str("cannot write ", tmp.string()));
    f << content;
    if (!f.flush()) throw std::runtime_error(str("cannot write ", tmp.string()));
  }
  fsync_path(tmp);
  fs::rename(tmp, path);
}

std::string read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(str("cannot read ", path.string()));
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

}  // namespace sctrain::train
