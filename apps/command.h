// Subcommands register themselves: each cmd_*.cpp defines one with SCTRAIN_COMMAND.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace sctrain::app {

// Adds the subcommand's options to `cmd` and returns what runs it (its exit code).
using Setup = std::function<std::function<int()>(CLI::App& cmd)>;

struct Command {
  std::string name;
  std::string summary;
  int order;  // position in `sctrain --help`: the order data flows
  Setup setup;
};

std::vector<Command>& registry();
inline bool register_command(Command c) {
  registry().push_back(std::move(c));
  return true;
}

}  // namespace sctrain::app

#define SCTRAIN_CONCAT_(a, b) a##b
#define SCTRAIN_CONCAT(a, b) SCTRAIN_CONCAT_(a, b)
#define SCTRAIN_COMMAND(...)                                                      \
  [[maybe_unused]] static const bool SCTRAIN_CONCAT(sctrain_command_, __LINE__) = \
      ::sctrain::app::register_command(::sctrain::app::Command __VA_ARGS__)
