// ExecuteStream's output batcher and back-pressure, through a real server and channel.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/compress.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/event_queue.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using ::execd::testing::TestServer;
using ::execd::testing::WaitFor;

using StreamingTest = testing::ServerTest;

// A /proc field of `pid`: a line of /proc/PID/io ("wchar: N"), or the wchan file.
int64_t BytesWritten(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/io"));
  std::string line;
  while (std::getline(in, line)) {
    int64_t n;
    if (line.rfind("wchar: ", 0) == 0 && absl::SimpleAtoi(line.substr(7), &n)) return n;
  }
  return -1;
}
std::string WaitChannel(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/wchan"));
  std::string s;
  std::getline(in, s);
  return s;
}

// Reads a stream's first event, which must be `started`; the child's pid, or 0.
pid_t ReadStarted(grpc::ClientReaderInterface<v1::ExecuteEvent>& reader) {
  v1::ExecuteEvent event;
  if (!reader.Read(&event) || !event.has_started()) return 0;
  return event.started().pid();
}

// Waits (bounded) until `pid` is blocked writing to its full pipe: wchan is "pipe_write"
// (or "anon_pipe_write" on newer kernels) while blocked there.
bool WaitBlockedOnPipe(pid_t pid) {
  return WaitFor([&] { return absl::EndsWith(WaitChannel(pid), "pipe_write"); }, absl::Seconds(30));
}

// The rest of a stream, read to its end: the output bytes, and whether the exit came. Each
// chunk holds at most `max_chunk` bytes (0: any number); the exit is the last event, a
// clean EXITED with its stdout whole.
struct Rest {
  int64_t received = 0;
  bool exited = false;
};
void ReadRest(grpc::ClientReaderInterface<v1::ExecuteEvent>& reader, size_t max_chunk, Rest* rest) {
  v1::ExecuteEvent event;
  while (reader.Read(&event)) {
    ASSERT_FALSE(rest->exited) << "an event after the exit";
    if (event.has_output()) {
      if (max_chunk > 0) {
        EXPECT_LE(event.output().data().size(), max_chunk);
      }
      rest->received += static_cast<int64_t>(event.output().data().size());
    }
    if (event.has_exited()) {
      rest->exited = true;
      EXPECT_EQ(event.exited().termination(), v1::EXITED);
      EXPECT_FALSE(event.exited().stdout_truncated());
    }
  }
}

TEST_F(StreamingTest, OutputComesInChunksOfTheAskedSizeAndAllBeforeTheExit) {
  v1::ExecuteRequest request = TestServer::Request({"/usr/bin/head", "-c", "10500", "/dev/zero"});
  request.set_stream_chunk_bytes(1000);
  request.mutable_stream_flush_interval()->set_seconds(10);  // Only size or exit flush.
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  std::vector<size_t> chunks;
  bool exited = false;
  while (reader->Read(&event)) {
    ASSERT_FALSE(exited) << "an event after the exit";
    if (event.has_output()) chunks.push_back(event.output().data().size());
    if (event.has_exited()) exited = true;
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(exited);
  std::vector<size_t> want(10, 1000);
  want.push_back(500);  // The remainder, flushed by the exit.
  EXPECT_EQ(chunks, want);
}

TEST_F(StreamingTest, AQuietChildsOutputIsFlushedAfterTheInterval) {
  v1::ExecuteRequest request = TestServer::Request({"/bin/sh", "-c", "echo ready; exec sleep 30"});
  request.mutable_stream_flush_interval()->set_nanos(20'000'000);
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_started());
  // Far below the 64 KiB chunk, yet it arrives while the child still runs.
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_output());
  EXPECT_EQ(event.output().data(), "ready\n");
  context.TryCancel();
  while (reader->Read(&event)) {
  }
  reader->Finish();
}

TEST_F(StreamingTest, ASlowReaderMakesTheChildWaitInsteadOfGrowingTheServer) {
  constexpr int64_t kTotal = 64 << 20;
  v1::ExecuteRequest request =
      TestServer::Request({"/usr/bin/head", "-c", std::to_string(kTotal), "/dev/zero"});
  request.mutable_limits()->set_max_output_bytes(kTotal);
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, request);
  const pid_t pid = ReadStarted(*reader);
  ASSERT_GT(pid, 0);
  // The test reads nothing more: the child must end up blocked on its full pipe, having
  // written only what the server buffers (~1 MiB) and gRPC's flow-control windows hold.
  ASSERT_TRUE(WaitBlockedOnPipe(pid))
      << "wchan " << WaitChannel(pid) << ", wrote " << BytesWritten(pid);
  const int64_t written = BytesWritten(pid);
  EXPECT_GT(written, 0);
  EXPECT_LT(written, kTotal / 4) << "the server read on while nobody read from it";
  // Reading resumes the child; everything arrives, then the exit.
  Rest rest;
  ASSERT_NO_FATAL_FAILURE(ReadRest(*reader, 0, &rest));
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(rest.exited);
  EXPECT_EQ(rest.received, kTotal);
}

// A child that wrote more than the window and exited while nobody read: its last output is
// held (not queued as messages all at once), and the exit comes after all of it once read.
TEST_F(StreamingTest, AnExitedChildsHeldOutputAllArrivesBeforeItsExit) {
  constexpr int64_t kTotal = 4 << 20;
  v1::ExecuteRequest request =
      TestServer::Request({"/bin/sh", "-c",
                           absl::StrCat("head -c ", kTotal, " /dev/zero > /dev/null; head -c ",
                                        kTotal / 16, " /dev/zero")});
  request.set_stream_chunk_bytes(64);
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, request);
  const pid_t pid = ReadStarted(*reader);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitFor([&] { return !testing::ProcessAlive(pid); }, absl::Seconds(30)));
  Rest rest;
  ASSERT_NO_FATAL_FAILURE(ReadRest(*reader, 64, &rest));
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(rest.exited);
  EXPECT_EQ(rest.received, kTotal / 16);
}

// Everything a stream delivers, and how it ended.
struct Streamed {
  int64_t bytes = 0;
  v1::ExecuteResponse exited;
  grpc::Status status;
};
Streamed Drain(v1::Executor::Stub& stub, const v1::ExecuteRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub.ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  Streamed out;
  while (reader->Read(&event)) {
    if (event.has_output()) out.bytes += static_cast<int64_t>(event.output().data().size());
    if (event.has_exited()) out.exited = event.exited();
  }
  out.status = reader->Finish();
  return out;
}

TEST(StreamOutputCap, StreamsAreBoundByTheirOwnCapNotByTheMessageSize) {
  {
    // Server defaults: 16 MiB unary cap, 64 MiB messages; a stream carries more.
    auto server = TestServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    Streamed s = Drain((*server)->stub(),
                       TestServer::Request({"/usr/bin/head", "-c", "100000000", "/dev/zero"}));
    ASSERT_TRUE(s.status.ok()) << s.status.error_message();
    EXPECT_EQ(s.bytes, 100'000'000);
    EXPECT_EQ(s.exited.termination(), v1::EXITED);
    EXPECT_FALSE(s.exited.stdout_truncated());
  }
  auto server = TestServer::Start(
      [](server::ServerConfig& c) { c.policy.max_stream_output_bytes = 1 << 20; });
  ASSERT_TRUE(server.ok()) << server.status();
  Streamed capped = Drain((*server)->stub(),
                          TestServer::Request({"/usr/bin/head", "-c", "3000000", "/dev/zero"}));
  EXPECT_EQ(capped.bytes, 1 << 20);
  EXPECT_EQ(capped.exited.termination(), v1::OUTPUT_LIMIT_EXCEEDED);
  EXPECT_TRUE(capped.exited.stdout_truncated());
  v1::ExecuteRequest too_much = TestServer::Request({"/bin/true"});
  too_much.mutable_limits()->set_max_output_bytes(2 << 20);
  Streamed rejected = Drain((*server)->stub(), too_much);
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(rejected.status.error_message(),
              ::testing::HasSubstr("exceeds the server maximum for streams"));
}

TEST_F(StreamingTest, ChunkSettingsOutOfRangeAreRejected) {
  v1::ExecuteRequest request = TestServer::Request({"/bin/true"});
  request.set_stream_chunk_bytes(64 << 20);
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("stream_chunk_bytes"));
}

// A cache hit streams the stored output as a run does: in chunks of stream_chunk_bytes, not
// as one message of the whole output (which a client's 4 MiB receive limit can refuse).
TEST_F(StreamingTest, ACacheHitIsStreamedInChunksOfTheAskedSize) {
  server_.reset();  // One server at a time: this one has a cache.
  auto server = TestServer::Start([](server::ServerConfig& c) { c.cache.max_bytes = 4 << 20; });
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  v1::ExecuteRequest request = TestServer::Request({"/usr/bin/head", "-c", "200000", "/dev/zero"});
  request.set_cache_policy(v1::READ_WRITE);
  v1::ExecuteResponse stored;
  ASSERT_TRUE(server_->Execute(request, &stored).ok());
  ASSERT_EQ(stored.stdout().size(), 200000u);
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  std::vector<size_t> chunks;
  bool hit = false;
  while (reader->Read(&event)) {
    if (event.has_output()) chunks.push_back(event.output().data().size());
    if (event.has_exited()) hit = event.exited().cache_hit();
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(hit);
  std::vector<size_t> want(3, 64 << 10);
  want.push_back(200000 - 3 * (64 << 10));
  EXPECT_EQ(chunks, want);
}

// The engine's thread closes the writer (the command ended) while a gRPC thread's
// OnWriteDone finishes the call, after which gRPC's OnDone deletes the reactor at once:
// Close must not touch the writer once another thread may have finished the call. Not
// deterministic: each round starts the two at a different offset; under ASan a touch after
// the delete is reported.
TEST(EventWriterRace, CloseLeavesTheWriterAloneOnceAnotherThreadMayFinish) {
  constexpr int kRounds = 30000;
  std::atomic<server::EventWriter<v1::ExecuteEvent>*> writer{nullptr};
  std::atomic<int> go{0};
  std::atomic<int> closed{0};
  std::atomic<int> spin{0};  // Varies the offset between the two threads.
  thread_local bool finished_here = false;
  std::thread engine([&] {
    for (int round = 1; round <= kRounds; ++round) {
      while (go.load(std::memory_order_acquire) != round) {
      }
      writer.load()->Close(grpc::Status::OK);
      closed.store(round, std::memory_order_release);
    }
  });
  for (int round = 1; round <= kRounds; ++round) {
    auto* w = new server::EventWriter<v1::ExecuteEvent>(
        {.start_write = [](const v1::ExecuteEvent*) {},
         .finish = [](const grpc::Status&) { finished_here = true; },
         .pause_output = [](bool) {}},
        /*open=*/true);
    v1::ExecuteEvent started;
    started.mutable_started()->set_pid(1);
    w->Push(started);  // Its write is in flight.
    writer.store(w);
    finished_here = false;
    go.store(round, std::memory_order_release);
    for (int i = 0; i < round % 200; ++i) spin.fetch_add(1, std::memory_order_relaxed);
    w->WriteDone(true);
    if (finished_here) delete w;  // This thread finished the call: OnDone follows.
    while (closed.load(std::memory_order_acquire) != round) {
    }
    if (!finished_here) delete w;
  }
  engine.join();
}

std::string Plain(const std::string& data, v1::Compression compression) {
  if (compression == v1::COMPRESSION_NONE) return data;
  EXPECT_EQ(compression, v1::LZ4);
  auto plain = core::Lz4Decompress(data, size_t{1} << 30);
  EXPECT_TRUE(plain.ok()) << plain.status();
  return plain.ok() ? *plain : "";
}

TEST_F(StreamingTest, CallersThatAcceptLz4GetCompressibleOutputCompressed) {
  const std::string seq = testing::RunProcess({"/usr/bin/seq", "1", "100000"}).out;
  struct Case {
    std::vector<std::string> argv;
    bool accept;
    v1::Compression want;
  } cases[] = {
      {{"/usr/bin/seq", "1", "100000"}, true, v1::LZ4},
      {{"/usr/bin/seq", "1", "100000"}, false, v1::COMPRESSION_NONE},  // Not asked for.
      {{"/bin/echo", "hi"}, true, v1::COMPRESSION_NONE},               // Too small.
      {{"/usr/bin/head", "-c", "100000", "/dev/urandom"}, true, v1::COMPRESSION_NONE},
  };
  for (const Case& c : cases) {
    v1::ExecuteRequest request;
    for (const auto& a : c.argv) request.add_argv(a);
    if (c.accept) request.set_accept_compression(v1::LZ4);
    v1::ExecuteResponse response;
    ASSERT_TRUE(server_->Execute(request, &response).ok());
    EXPECT_EQ(response.stdout_compression(), c.want) << c.argv[0];
    if (c.argv[0] == "/usr/bin/seq") {
      EXPECT_TRUE(Plain(response.stdout(), response.stdout_compression()) == seq);
    }
    if (c.want == v1::LZ4) {
      EXPECT_LE(response.stdout().size(), seq.size() / 8 * 7);
    }
  }
}

// A stream is compressed when the wire drains slower than lz4 would save: here a reader
// that stops reading until the child is blocked on its pipe, so the write in flight
// waits on gRPC's flow control. Each compressed chunk is a whole frame.
TEST_F(StreamingTest, AStreamToAReaderThatFellBehindIsCompressedInWholeFrames) {
  const std::string seq = testing::RunProcess({"/usr/bin/seq", "1", "2000000"}).out;
  v1::ExecuteRequest request = TestServer::Request({"/usr/bin/seq", "1", "2000000"});
  request.set_accept_compression(v1::LZ4);
  request.mutable_limits()->set_max_output_bytes(static_cast<int64_t>(seq.size()));
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, request);
  const pid_t pid = ReadStarted(*reader);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(WaitBlockedOnPipe(pid)) << "wchan " << WaitChannel(pid);
  v1::ExecuteEvent event;
  std::string out;
  int compressed = 0;
  while (reader->Read(&event)) {
    if (!event.has_output()) continue;
    if (event.output().compression() == v1::LZ4) ++compressed;
    out += Plain(event.output().data(), event.output().compression());
  }
  ASSERT_TRUE(reader->Finish().ok());
  // Not EXPECT_EQ: gtest's diff of two 15 MB strings takes minutes.
  EXPECT_TRUE(out == seq) << out.size() << " bytes, want " << seq.size();
  EXPECT_GT(compressed, 0);
}

}  // namespace
}  // namespace execd
