// Checkpoint directories: OUT/checkpoints/step_0000100/ holding
//   model.pt        model parameters (torch archive, keys = parameter names)
//   train_state.pt  AdamW moments and steps, RNG states
//   meta.json       {"step", "loader" (LoaderState), "params", "time"}
//   config.yaml     the resolved run configuration (rebuilds the model)
// Written atomically: files go to step_XXXXXXX.tmp, are fsynced, then the directory is
// renamed into place (and its parent fsynced). A directory without ".tmp" is complete.
// No LibTorch here.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace sctrain::train {

std::string checkpoint_name(int64_t step);  // "step_0000100"

struct CheckpointRef {
  int64_t step = 0;
  std::filesystem::path dir;
};
// Complete checkpoints under dir (OUT/checkpoints), oldest first.
std::vector<CheckpointRef> list_checkpoints(const std::filesystem::path& dir);
std::optional<CheckpointRef> latest_checkpoint(const std::filesystem::path& dir);

// Creates dir/step_XXXXXXX atomically: `write` fills the temporary directory it is given;
// every file is then fsynced and the directory renamed into place. Returns the final path.
std::filesystem::path write_checkpoint(const std::filesystem::path& dir, int64_t step,
                                       const std::function<void(const std::filesystem::path&)>& write);
// Removes all but the newest `keep` checkpoints (and stale .tmp directories).
void prune_checkpoints(const std::filesystem::path& dir, int64_t keep);

// Whole-file helpers.
void write_file_atomic(const std::filesystem::path& path, const std::string& content);
std::string read_file(const std::filesystem::path& path);
void fsync_path(const std::filesystem::path& path);  // a file or a directory
// Removes a file or a directory tree (no error when absent). Use this, not
// std::filesystem::remove_all: libtorch.so exports its own copy of that function, which
// crashes (null call) in processes that link LibTorch.
void remove_tree(const std::filesystem::path& path);

}  // namespace sctrain::train
