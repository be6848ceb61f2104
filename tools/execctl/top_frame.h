// How `execctl top` draws its figures: one frame of text lines, no blank line inside (so
// frames written one after another to a file stay apart by one), at most 80 columns for a
// server of a few pools. A figure that cannot be known yet (a rate on the first frame, a
// quantile of an interval in which no call ended) shows as "-". Pure functions.
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "tools/execctl/top_figures.h"

namespace execd::execctl {

// The frame for `figures` of the server at `target`.
std::string FormatFrame(const TopFigures& figures, absl::string_view target);

// `frame` cut to fit a terminal of `rows` x `columns`: lines cut at `columns`, and at most
// rows - 1 lines, so that the last line's newline does not scroll the first off the screen.
std::string FitToScreen(absl::string_view frame, int rows, int columns);

}  // namespace execd::execctl
