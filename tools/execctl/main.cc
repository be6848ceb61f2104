// execctl: the command-line client of execd. See `execctl help`.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "core/malloc_tuning.h"
#include "tools/execctl/args.h"
#include "tools/execctl/execctl.h"

int main(int argc, char** argv) {
  execd::core::TuneMallocForStreams();
  const char* env_target = std::getenv("EXECD_TARGET");
  auto args = execd::execctl::ParseArgs(std::vector<std::string>(argv + 1, argv + argc),
                                        env_target == nullptr ? "" : env_target);
  if (!args.ok()) {
    std::cerr << "execctl: " << args.status().message() << "\n\n" << execd::execctl::kUsage;
    return execd::execctl::kExitError;
  }
  return execd::execctl::RunCommand(*args);
}
