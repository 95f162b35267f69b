// sctrain: a trainer for single-cell foundation models.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <functional>
#include <map>

#include "command.h"
#include "util/log.h"

namespace sctrain::app {
std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace sctrain::app

int main(int argc, char** argv) {
  using namespace sctrain;
  CLI::App cli{
      "sctrain: pretrain transformer foundation models on single-cell RNA-seq (.h5ad).\n\n"
      "Data flows h5ad -> tokens -> batches -> model -> checkpoints and metrics:\n"
      "  sctrain inspect data/pbmc3k_seurat.h5ad    # what is in a file\n"
      "  sctrain prepare --data data/pbmc3k_seurat.h5ad --show 3   # its cells as tokens\n"
      "  sctrain pretrain --config configs/quickstart.yaml\n"
      "Each subcommand has its own --help.",
      "sctrain"};
  cli.require_subcommand(1);
  std::string level = "info";
  cli.add_option("--log-level", level, "debug, info, warn, error or off")->capture_default_str();

  auto& commands = app::registry();
  std::sort(commands.begin(), commands.end(),
            [](const app::Command& a, const app::Command& b) { return a.order < b.order; });
  std::map<CLI::App*, std::function<int()>> runners;
  for (auto& c : commands) {
    CLI::App* sub = cli.add_subcommand(c.name, c.summary);
    runners[sub] = c.setup(*sub);
    // The list shows the description's first paragraph; the rest leads the subcommand's --help.
    std::string desc = sub->get_description();
    size_t cut = desc.find("\n\n");
    if (cut != std::string::npos) {
      std::string footer = sub->get_footer();
      sub->description(desc.substr(0, cut));
      sub->footer(desc.substr(cut + 2) + (footer.empty() ? "" : "\n\n" + footer));
    }
  }

  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  try {
    log::set_level(log::parse_level(level));
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sctrain: error: %s\n", e.what());
    return 2;
  }
  return 1;
}
