// `execctl top`: the server's figures, refreshed every --interval like top(1). Each frame
// comes from two GetStatus(include_metrics) snapshots (top_figures.h); on a terminal it
// redraws the screen in place, otherwise frames follow one another apart by a blank line.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "tools/execctl/args.h"

namespace execd::execctl {

// Runs until --iterations frames are drawn or Ctrl-C (exit 0); when a snapshot cannot be
// taken (the server went away), says why and returns the RPC error's exit code.
int Top(const Args& args, const std::shared_ptr<grpc::Channel>& channel);

}  // namespace execd::execctl
