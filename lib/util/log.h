// Logging facade. spdlog stays behind this header so that files which include
// LibTorch (which ships its own fmt) never see spdlog's fmt.
#pragma once
#include <sstream>
#include <string>
#include <string_view>

namespace sctrain::log {

enum class Level { Debug, Info, Warn, Error, Off };
void set_level(Level level);
// "debug", "info", "warn", "error", "off"; throws std::invalid_argument otherwise.
Level parse_level(const std::string& name);
// Also write the log to this file (in addition to stderr).
void add_file(const std::string& path);

void debug(std::string_view msg);
void info(std::string_view msg);
void warn(std::string_view msg);
void error(std::string_view msg);

}  // namespace sctrain::log

namespace sctrain {
// str("read ", n, " cells") -> "read 12 cells"
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace sctrain
