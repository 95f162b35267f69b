#include "util/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

namespace sctrain::log {
namespace {

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto lg = std::make_shared<spdlog::logger>("sctrain", sink);
    lg->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    lg->set_level(spdlog::level::info);
    lg->flush_on(spdlog::level::info);
    return lg;
  }();
  return *l;
}

}  // namespace

void set_level(Level level) {
  static const spdlog::level::level_enum map[] = {spdlog::level::debug, spdlog::level::info,
                                                  spdlog::level::warn, spdlog::level::err,
                                                  spdlog::level::off};
  logger().set_level(map[static_cast<int>(level)]);
}

Level parse_level(const std::string& name) {
  if (name == "debug") return Level::Debug;
  if (name == "info") return Level::Info;
  if (name == "warn") return Level::Warn;
  if (name == "error") return Level::Error;
  if (name == "off") return Level::Off;
  throw std::invalid_argument("unknown log level '" + name + "' (debug, info, warn, error, off)");
}

void add_file(const std::string& path) {
  auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, false);
  sink->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  logger().sinks().push_back(sink);
}

void debug(std::string_view msg) { logger().debug("{}", msg); }
void info(std::string_view msg) { logger().info("{}", msg); }
void warn(std::string_view msg) { logger().warn("{}", msg); }
void error(std::string_view msg) { logger().error("{}", msg); }

}  // namespace sctrain::log
