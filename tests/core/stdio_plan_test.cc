// The stdio plan is decided from the command and the caller's wishes alone: no pipe, no
// terminal, no kernel.
#include "core/stdio_plan.h"

#include "gtest/gtest.h"

namespace execd::core {
namespace {

using Input = StdioPlan::Input;
using Outputs = StdioPlan::Outputs;
using Report = StdioPlan::Report;

Command WithStdin(std::string data) {
  Command command;
  command.stdin_data = std::move(data);
  return command;
}

StdioPlan Plan(const Command& command, const StdioWants& wants = {}) {
  absl::StatusOr<StdioPlan> plan = PlanStdio(command, wants);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.value_or(StdioPlan{});
}

TEST(StdioPlan, NoStdinReadsDevNullAndOutputsGoThroughPipes) {
  EXPECT_EQ(Plan(Command{}), (StdioPlan{Input::kNull, Outputs::kPipes, Report::kNone}));
}

TEST(StdioPlan, StdinGoesThroughAPipeUnlessLargeEnoughForAMemfd) {
  const StdioWants memfd_from_4{.memfd_stdin_bytes = 4};
  EXPECT_EQ(Plan(WithStdin("abc"), memfd_from_4).input, Input::kPipe);
  EXPECT_EQ(Plan(WithStdin("abcd"), memfd_from_4).input, Input::kMemfd);
  EXPECT_EQ(Plan(WithStdin("abcd"), StdioWants{.memfd_stdin_bytes = 0}).input, Input::kPipe);
}

// A pre-warmed process gets its stdin later, through the pipe, whatever its size.
TEST(StdioPlan, AStdinPipeIsAPipeEvenWithoutDataOrWithMuch) {
  const StdioWants pipe{.stdin_pipe = true, .memfd_stdin_bytes = 4};
  EXPECT_EQ(Plan(Command{}, pipe).input, Input::kPipe);
  EXPECT_EQ(Plan(WithStdin("abcdef"), pipe).input, Input::kPipe);
}

TEST(StdioPlan, ATerminalIsStdinAndOutputsAndTakesNoReport) {
  Command command = WithStdin(std::string(100, 'x'));
  command.terminal = TerminalSize{24, 80};
  EXPECT_EQ(Plan(command, StdioWants{.memfd_stdin_bytes = 4, .exit_report = true}),
            (StdioPlan{Input::kTerminal, Outputs::kTerminal, Report::kNone}));
}

TEST(StdioPlan, TheExitReportIsASingleProgramsOnly) {
  Command single;
  EXPECT_EQ(Plan(single, StdioWants{.exit_report = true}).report, Report::kExitReport);
  EXPECT_EQ(Plan(single).report, Report::kNone);
  Command pipeline;
  pipeline.pipe_to.push_back(PipelineStage{});
  EXPECT_EQ(Plan(pipeline, StdioWants{.exit_report = true}).report, Report::kNone);
}

TEST(StdioPlan, APipelineOnATerminalIsRefused) {
  Command command;
  command.terminal = TerminalSize{24, 80};
  command.pipe_to.push_back(PipelineStage{});
  absl::StatusOr<StdioPlan> plan = PlanStdio(command, StdioWants{});
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan.status().message(), "a pipeline cannot run on a pseudo-terminal");
}

}  // namespace
}  // namespace execd::core
