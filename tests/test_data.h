// Where tests find real data: the project's data/ and, when present, ../shared/data.
#pragma once
#include <filesystem>
#include <string>

namespace sctrain::testing {

inline std::string project_data(const std::string& name) {
  return std::string(SCTRAIN_SOURCE_DIR) + "/data/" + name;
}

// Path of a file in ../shared/data, or "" when the folder is absent.
inline std::string shared_data(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(SCTRAIN_SHARED_DATA) / name;
  return std::filesystem::exists(p) ? p.string() : std::string();
}

}  // namespace sctrain::testing

// Skips the test when a ../shared/data file is absent (a user's fresh checkout).
#define SCTRAIN_REQUIRE_SHARED(var, name)                                          \
  const std::string var = ::sctrain::testing::shared_data(name);                   \
  if (var.empty()) GTEST_SKIP() << "../shared/data/" << name << " is absent"
