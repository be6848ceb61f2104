// Pipelines (`pipe_to`) through a real server: data flows program to program without a
// shell, each program's end is reported, the command's status is the last program's,
// limits and cancels stop every program, and bad stages are rejected by name.
#include <signal.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using ::testing::HasSubstr;
using testing::TestServer;

// `first | rest[0] | rest[1] ...`
v1::ExecuteRequest Pipeline(std::initializer_list<std::string> first,
                            std::initializer_list<std::initializer_list<std::string>> rest) {
  v1::ExecuteRequest request = TestServer::Request(first);
  for (const auto& argv : rest) {
    v1::PipeStage* stage = request.add_pipe_to();
    for (const std::string& a : argv) stage->add_argv(a);
  }
  return request;
}

class PipelineTest : public testing::ServerTest {
 protected:
  v1::ExecuteResponse Run(const v1::ExecuteRequest& request) {
    v1::ExecuteResponse response;
    grpc::Status status = server_->Execute(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status RunExpectingError(const v1::ExecuteRequest& request) {
    v1::ExecuteResponse response;
    return server_->Execute(request, &response);
  }
};

TEST_F(PipelineTest, StdinFlowsThroughEveryProgramToTheLastOnesStdout) {
  v1::ExecuteRequest request =
      Pipeline({"sort"}, {{"uniq", "-c"}, {"sort", "-rn"}, {"head", "-n1"}});
  request.set_stdin("b\na\nb\nc\nb\na\n");
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::EXITED);
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.stdout(), "      3 b\n");
  ASSERT_EQ(r.stages_size(), 4);
  EXPECT_EQ(r.pid(), r.stages(0).pid());
  for (const v1::StageResult& stage : r.stages()) {
    EXPECT_GT(stage.pid(), 0);
    EXPECT_EQ(stage.exit_code(), 0);
    EXPECT_EQ(stage.signal(), 0);
  }
  EXPECT_NE(r.stages(0).pid(), r.stages(1).pid());
}

TEST_F(PipelineTest, TheCommandEndsAsItsLastProgramAndEachProgramIsReported) {
  v1::ExecuteResponse failing_first = Run(Pipeline({"/bin/sh", "-c", "echo x; exit 3"}, {{"cat"}}));
  EXPECT_EQ(failing_first.exit_code(), 0);
  EXPECT_EQ(failing_first.stdout(), "x\n");
  ASSERT_EQ(failing_first.stages_size(), 2);
  EXPECT_EQ(failing_first.stages(0).exit_code(), 3);
  EXPECT_EQ(failing_first.stages(1).exit_code(), 0);

  v1::ExecuteResponse failing_last = Run(Pipeline({"true"}, {{"/bin/sh", "-c", "exit 5"}}));
  EXPECT_EQ(failing_last.termination(), v1::EXITED);
  EXPECT_EQ(failing_last.exit_code(), 5);
  ASSERT_EQ(failing_last.stages_size(), 2);
  EXPECT_EQ(failing_last.stages(1).exit_code(), 5);

  v1::ExecuteResponse killed_last = Run(Pipeline({"true"}, {{"/bin/sh", "-c", "kill -TERM $$"}}));
  EXPECT_EQ(killed_last.termination(), v1::SIGNALED);
  EXPECT_EQ(killed_last.signal(), SIGTERM);
}

TEST_F(PipelineTest, AWriterWhoseReaderExitedDiesOfSigpipeAsInAShell) {
  v1::ExecuteResponse r = Run(Pipeline({"yes"}, {{"head", "-n2"}}));
  EXPECT_EQ(r.termination(), v1::EXITED);
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.stdout(), "y\ny\n");
  ASSERT_EQ(r.stages_size(), 2);
  EXPECT_EQ(r.stages(0).signal(), SIGPIPE);
}

TEST_F(PipelineTest, EveryProgramWritesTheOneStderr) {
  v1::ExecuteResponse r = Run(Pipeline({"/bin/sh", "-c", "echo one >&2; echo data"},
                                       {{"/bin/sh", "-c", "cat; echo two >&2"}}));
  EXPECT_EQ(r.stdout(), "data\n");
  EXPECT_THAT(r.stderr(), HasSubstr("one\n"));
  EXPECT_THAT(r.stderr(), HasSubstr("two\n"));
}

TEST_F(PipelineTest, LargeStdinCrossesALongPipelineIntact) {
  // 4 MiB: over the sealed-memfd threshold, so the first program reads a memfd and the
  // rest read pipes; 16 programs, the most a pipeline may have after argv.
  std::string data(4 << 20, 'x');
  for (size_t i = 0; i < data.size(); i += 4099) data[i] = static_cast<char>('a' + i % 26);
  v1::ExecuteRequest request = TestServer::Request({"cat"});
  for (int i = 0; i < 15; ++i) request.add_pipe_to()->add_argv("cat");
  request.add_pipe_to()->add_argv("md5sum");
  request.set_stdin(data);
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.stages_size(), 17);

  v1::ExecuteRequest local = TestServer::Request({"md5sum"});
  local.set_stdin(data);
  EXPECT_EQ(r.stdout(), Run(local).stdout());
}

TEST_F(PipelineTest, TheTimeoutStopsEveryProgram) {
  v1::ExecuteRequest request = Pipeline({"sleep", "100"}, {{"sleep", "100"}, {"cat"}});
  request.mutable_limits()->mutable_timeout()->set_nanos(300'000'000);
  absl::Time start = absl::Now();
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::TIMED_OUT);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ASSERT_EQ(r.stages_size(), 3);
  for (const v1::StageResult& stage : r.stages()) {
    EXPECT_NE(stage.signal(), 0) << "pid " << stage.pid();
    EXPECT_NE(kill(stage.pid(), 0), 0) << "pid " << stage.pid() << " still exists";
  }
}

TEST_F(PipelineTest, AnOutputCapOnTheLastProgramStopsThemAll) {
  v1::ExecuteRequest request = Pipeline({"yes"}, {{"cat"}});
  request.mutable_limits()->set_max_output_bytes(1000);
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::OUTPUT_LIMIT_EXCEEDED);
  EXPECT_EQ(r.stdout().size(), 1000u);
  EXPECT_TRUE(r.stdout_truncated());
}

TEST_F(PipelineTest, StreamedPipelineSendsTheLastProgramsOutputThenTheExit) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::ExecuteRequest request = Pipeline({"seq", "1", "1000"}, {{"tail", "-n1"}});
  auto reader = server_->stub().ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  std::string out;
  v1::ExecuteResponse exited;
  while (reader->Read(&event)) {
    if (event.has_output()) out += event.output().data();
    if (event.has_exited()) exited = event.exited();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(out, "1000\n");
  EXPECT_EQ(exited.stages_size(), 2);
}

TEST_F(PipelineTest, BadProgramsAreRejectedByTheirPlaceInThePipeline) {
  grpc::Status empty = RunExpectingError(Pipeline({"true"}, {{"cat"}, {}}));
  EXPECT_EQ(empty.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(empty.error_message(), HasSubstr("pipe_to[1].argv is empty"));

  grpc::Status missing = RunExpectingError(Pipeline({"true"}, {{"cat"}, {"no-such-program-x"}}));
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(missing.error_message(), HasSubstr("pipe_to[1]"));
  EXPECT_THAT(missing.error_message(), HasSubstr("no-such-program-x"));

  v1::ExecuteRequest nul = Pipeline({"true"}, {{"cat", std::string("a\0b", 3)}});
  grpc::Status nul_status = RunExpectingError(nul);
  EXPECT_EQ(nul_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(nul_status.error_message(), HasSubstr("pipe_to[0].argv[1]"));

  v1::ExecuteRequest too_long = TestServer::Request({"true"});
  for (int i = 0; i < 17; ++i) too_long.add_pipe_to()->add_argv("cat");
  grpc::Status long_status = RunExpectingError(too_long);
  EXPECT_EQ(long_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(long_status.error_message(), HasSubstr("over the limit of 16"));

  // And the server still serves.
  EXPECT_EQ(Run(Pipeline({"echo", "ok"}, {{"cat"}})).stdout(), "ok\n");
}

TEST_F(PipelineTest, ACancelledCallStopsEveryProgram) {
  const std::string marker = "EXECD_TEST_MARKER=" + testing::UniqueName("pipe");
  testing::AsyncCall call;
  call.request = Pipeline({"sleep", "100"}, {{"sleep", "100"}});
  (*call.request.mutable_env())["EXECD_TEST_MARKER"] = marker.substr(marker.find('=') + 1);
  call.Start(server_->stub());
  ASSERT_TRUE(testing::WaitFor([&] { return testing::ProcessesWithEnv(marker).size() == 2; },
                               absl::Seconds(10)));
  call.context.TryCancel();
  ASSERT_TRUE(call.Wait());
  EXPECT_EQ(call.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(
      testing::WaitFor([&] { return testing::ProcessesWithEnv(marker).empty(); }, absl::Seconds(5)))
      << testing::ProcessesWithEnv(marker).size() << " programs survived";
}

}  // namespace
}  // namespace execd
