// core::Dispatcher and core::MemoryBudget without gRPC: the memory budget's accounting and
// refusals; the cache policies, TTLs on the cache's own clock, single flight of identical
// calls and the queue places their waiters hold; the budget as the dispatcher applies it;
// and cache hits replayed to a streaming reader at its pace. Commands are real spawns on a
// real Engine; a command that must stay running blocks on a FIFO until the test writes it
// a line, so every wait is for an event, bounded.
#include "core/dispatcher.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/memory_budget.h"
#include "core/retry.h"
#include "core/validate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/manual_clock.h"
#include "tests/support/single_cpu.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMiB = 1 << 20;
constexpr absl::Duration kWait = absl::Seconds(30);

// The retry delay a refusal suggests, or -1 when it carries none.
int64_t PushbackMs(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryPushbackPayload);
  int64_t ms = -1;
  if (payload.has_value() && !absl::SimpleAtoi(std::string(*payload), &ms)) ms = -2;
  return ms;
}

// ---- MemoryBudget ----

// Grants of `first` and `second` bytes from `budget`, which has room for both.
void TakeTwo(MemoryBudget& budget, int64_t first, int64_t second, std::optional<MemoryGrant>* a,
             std::optional<MemoryGrant>* b) {
  *a = budget.TryReserve(first);
  *b = budget.TryReserve(second);
  ASSERT_TRUE(a->has_value() && b->has_value());
}

TEST(MemoryBudgetTest, ReservationsAddUpAndComeBackWhenTheirGrantsAreDestroyed) {
  MemoryBudget budget(1000);
  {
    std::optional<MemoryGrant> a = budget.TryReserve(300);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->bytes(), 300);
    absl::StatusOr<MemoryGrant> b = budget.Reserve(200, "b");
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->bytes(), 200);
    EXPECT_EQ(budget.in_use(), 500);
  }
  EXPECT_EQ(budget.in_use(), 0);
}

TEST(MemoryBudgetTest, ResetGivesTheBytesBackOnce) {
  MemoryBudget budget(1000);
  std::optional<MemoryGrant> kept, grant;
  ASSERT_NO_FATAL_FAILURE(TakeTwo(budget, 100, 400, &kept, &grant));
  grant->Reset();
  EXPECT_EQ(grant->bytes(), 0);
  EXPECT_EQ(budget.in_use(), 100);
  // Nothing is left to give back: other grants' bytes stay counted.
  grant->Reset();
  grant.reset();
  EXPECT_EQ(budget.in_use(), 100);
}

TEST(MemoryBudgetTest, AMovedGrantIsGivenBackOnceByItsNewHolder) {
  MemoryBudget budget(1000);
  MemoryGrant outer;
  {
    std::optional<MemoryGrant> inner = budget.TryReserve(300);
    ASSERT_TRUE(inner.has_value());
    outer = *std::move(inner);
    EXPECT_EQ(inner->bytes(), 0);
  }  // The moved-from grant holds nothing to give back.
  EXPECT_EQ(outer.bytes(), 300);
  EXPECT_EQ(budget.in_use(), 300);

  // Assigning over a grant gives back what it held.
  std::optional<MemoryGrant> smaller = budget.TryReserve(100);
  ASSERT_TRUE(smaller.has_value());
  outer = *std::move(smaller);
  EXPECT_EQ(budget.in_use(), 100);

  MemoryGrant constructed(std::move(outer));
  EXPECT_EQ(constructed.bytes(), 100);
  EXPECT_EQ(outer.bytes(), 0);
  EXPECT_EQ(budget.in_use(), 100);
  constructed.Reset();
  EXPECT_EQ(budget.in_use(), 0);
}

TEST(MemoryBudgetTest, TryReserveFillsTheBudgetExactlyAndRefusesPastIt) {
  MemoryBudget budget(1000);
  std::optional<MemoryGrant> a, b;
  ASSERT_NO_FATAL_FAILURE(TakeTwo(budget, 600, 400, &a, &b));
  EXPECT_EQ(budget.in_use(), 1000);

  EXPECT_FALSE(budget.TryReserve(1).has_value());
  EXPECT_EQ(budget.in_use(), 1000);  // A refusal holds nothing.

  b->Reset();
  EXPECT_TRUE(budget.TryReserve(400).has_value());
}

TEST(MemoryBudgetTest, ReserveRefusesWithARetryPushbackAndNamesTheFlag) {
  MemoryBudget budget(1000);
  absl::StatusOr<MemoryGrant> held = budget.Reserve(800, "the first call");
  ASSERT_TRUE(held.ok()) << held.status();

  absl::StatusOr<MemoryGrant> refused = budget.Reserve(300, "the second call");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("the second call"));
  EXPECT_THAT(refused.status().message(), HasSubstr("--memory_budget_bytes"));
  // Memory comes back as calls end: the caller is told to retry after a while.
  EXPECT_GT(PushbackMs(refused.status()), 0) << refused.status();
  EXPECT_EQ(budget.in_use(), 800);
}

TEST(MemoryBudgetTest, AReservationLargerThanTheWholeBudgetSaysSo) {
  MemoryBudget budget(1000);  // Nothing else holds any of it.
  absl::StatusOr<MemoryGrant> refused = budget.Reserve(1001, "this call");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("more than the whole budget"));
  EXPECT_THAT(refused.status().message(), HasSubstr("--memory_budget_bytes"));
  // Retrying would never help it, so no retry delay is suggested.
  EXPECT_EQ(PushbackMs(refused.status()), -1) << refused.status();
  EXPECT_EQ(budget.in_use(), 0);
}

TEST(MemoryBudgetTest, ALimitOfZeroOrLessGrantsEverythingAndStillCounts) {
  for (int64_t limit : {int64_t{0}, int64_t{-1}}) {
    MemoryBudget budget(limit);
    absl::StatusOr<MemoryGrant> a = budget.Reserve(int64_t{1} << 40, "a");
    std::optional<MemoryGrant> b = budget.TryReserve(int64_t{1} << 40);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(budget.in_use(), int64_t{2} << 40) << "limit " << limit;
    EXPECT_EQ(budget.limit(), limit);
  }
}

// ---- Dispatcher ----

CallOptions ReadWrite(absl::Duration cache_ttl = absl::ZeroDuration()) {
  CallOptions options;
  options.cache = CachePolicy::kReadWrite;
  options.cache_ttl = cache_ttl;
  return options;
}

TEST(DispatcherWorstCaseTest, EachShapeReservesWhatItsTransportCanHold) {
  Command command;
  command.stdin_data = std::string(1000, 'x');
  command.limits.max_output_bytes = 4096;
  // A unary call holds its stdin and both streams' whole output.
  EXPECT_EQ(Dispatcher::WorstCase(command, CallShape::kUnary), 1000 + 2 * 4096);
  // A stream holds a window queued for its reader, and what the engine holds back behind
  // it, whatever the output cap.
  EXPECT_EQ(Dispatcher::WorstCase(command, CallShape::kStream), 1000 + 2 * kStreamWindowBytes);
  // A session also holds a window of stdin queued ahead of its child.
  EXPECT_EQ(Dispatcher::WorstCase(command, CallShape::kSession), 1000 + 3 * kStreamWindowBytes);
  EXPECT_EQ(kStreamWindowBytes, kMiB);
}

// The transport's side of a call: records what the call hears and signals its end.
class Sink final : public CallSink {
 public:
  // The first OnOutput pauses `call`, from inside the callback, as a transport does whose
  // reader fell behind.
  void PauseOnFirstOutput(std::weak_ptr<Call> call) {
    absl::MutexLock lock(&mu_);
    pause_ = std::move(call);
  }

  // On OnStarted, from inside the callback, `call` gets `input` and end of file, as a
  // session's transport sends what its client wrote as soon as the command has started.
  void InputOnStart(std::weak_ptr<Call> call, std::string input) {
    absl::MutexLock lock(&mu_);
    input_to_ = std::move(call);
    input_ = std::move(input);
  }

  void OnStarted(pid_t, absl::Duration) override {
    std::shared_ptr<Call> input_to;
    std::string input;
    {
      absl::MutexLock lock(&mu_);
      started_ = true;
      input_to = input_to_.lock();
      input = std::move(input_);
    }
    if (input_to != nullptr) {
      input_to->WriteStdin(std::move(input));
      input_to->CloseStdin();
    }
  }
  void OnOutput(OutputStream stream, absl::string_view data) override {
    std::shared_ptr<Call> pause;
    {
      absl::MutexLock lock(&mu_);
      chunks_.push_back(Chunk{stream, std::string(data)});
      if (chunks_.size() == 1) pause = pause_.lock();
    }
    if (pause != nullptr) pause->SetOutputPaused(true);
  }
  void OnFinished(absl::StatusOr<Result> result) override {
    bool first;
    {
      absl::MutexLock lock(&mu_);
      first = ++finishes_ == 1;
      if (first) result_ = std::move(result);
    }
    if (first) done_.Notify();
  }

  absl::StatusOr<Result> Wait() {
    if (!done_.WaitForNotificationWithTimeout(kWait)) {
      return absl::DeadlineExceededError("the call did not end within 30 s");
    }
    absl::MutexLock lock(&mu_);
    return result_;
  }
  // Whether the call has ended already (it was answered on the thread that asked).
  bool finished() const { return done_.HasBeenNotified(); }
  int finishes() {
    absl::MutexLock lock(&mu_);
    return finishes_;
  }
  bool started() {
    absl::MutexLock lock(&mu_);
    return started_;
  }

  struct Chunk {
    OutputStream stream;
    std::string data;
  };
  std::vector<Chunk> chunks() {
    absl::MutexLock lock(&mu_);
    return chunks_;
  }
  std::string output(OutputStream stream) {
    absl::MutexLock lock(&mu_);
    std::string out;
    for (const Chunk& c : chunks_) {
      if (c.stream == stream) out += c.data;
    }
    return out;
  }

 private:
  absl::Notification done_;
  absl::Mutex mu_;
  absl::StatusOr<Result> result_ ABSL_GUARDED_BY(mu_) = absl::UnknownError("not finished");
  int finishes_ ABSL_GUARDED_BY(mu_) = 0;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Chunk> chunks_ ABSL_GUARDED_BY(mu_);
  std::weak_ptr<Call> pause_ ABSL_GUARDED_BY(mu_);
  std::weak_ptr<Call> input_to_ ABSL_GUARDED_BY(mu_);
  std::string input_ ABSL_GUARDED_BY(mu_);
};

// A FIFO a command blocks on (`read x < fifo`) until the test writes it a line. The test
// holds it open for reading and writing, so the command's open never blocks and a line
// written before the command reads it waits in the pipe; the shell's `read` takes one
// line, so each line releases one run.
class Gate {
 public:
  explicit Gate(std::string path) : path_(std::move(path)) {
    if (mkfifo(path_.c_str(), 0600) != 0) {
      ADD_FAILURE() << "mkfifo " << path_ << ": " << std::strerror(errno);
    }
    fd_ = open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) ADD_FAILURE() << "open " << path_ << ": " << std::strerror(errno);
  }
  ~Gate() {
    if (fd_ >= 0) close(fd_);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;

  const std::string& path() const { return path_; }
  // Lets one blocked (or next) run go on; it exits with `exit_code`.
  void Open(int exit_code) {
    const std::string line = absl::StrCat(exit_code, "\n");
    EXPECT_EQ(write(fd_, line.data(), line.size()), static_cast<ssize_t>(line.size()));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

class DispatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    policy_ = RequestPolicy::FromProcessEnvironment();
    policy_.server_env["PATH"] = "/usr/bin:/bin";
    cache_.clock = &clock_;
    ASSERT_EQ(Restart(Engine::Options{}), absl::OkStatus());
  }

  void TearDown() override {
    // What a failed test left running ends here, while its sinks and the dispatcher that
    // observe it are still there.
    if (engine_ != nullptr) engine_->Shutdown(absl::ZeroDuration());
    dispatcher_.reset();
    engine_.reset();
  }

  // A new engine made with `options` and a dispatcher over it with cache_ and
  // `memory_budget_bytes` (engines of one process share its cgroup: one at a time).
  absl::Status Restart(Engine::Options options, int64_t memory_budget_bytes = 0) {
    dispatcher_.reset();
    engine_.reset();
    options.kill_grace = absl::Milliseconds(200);
    auto engine = Engine::Create(options);
    if (!engine.ok()) return engine.status();
    engine_ = *std::move(engine);
    NewDispatcher(memory_budget_bytes);
    return absl::OkStatus();
  }
  // A new dispatcher (and cache) over the same engine, with cache_ as it is now.
  void NewDispatcher(int64_t memory_budget_bytes = 0) {
    dispatcher_.reset();
    dispatcher_ = std::make_unique<Dispatcher>(*engine_, policy_, cache_, memory_budget_bytes);
  }

  Command Prepare(CommandRequest request) {
    absl::StatusOr<Command> command = dispatcher_->Prepare(std::move(request), "");
    EXPECT_TRUE(command.ok()) << command.status();
    return command.ok() ? *std::move(command) : Command{};
  }

  // A command that logs each run of it in runs_path_, then runs `script`.
  CommandRequest Counted(const std::string& script) {
    CommandRequest request;
    request.argv = {"/bin/sh", "-c", absl::StrCat("echo ran >> ", runs_path_, "; ", script)};
    return request;
  }
  // A counted command that waits for a line on `gate`, prints "hi" and exits with the
  // number the line gives. Identical each time: one cache key for all of its calls.
  CommandRequest Gated(const Gate& gate) {
    return Counted(absl::StrCat("read x < ", gate.path(), "; echo hi; exit $x"));
  }
  // How many times counted commands ran.
  int Runs() {
    std::ifstream in(runs_path_);
    std::string line;
    int n = 0;
    while (std::getline(in, line)) ++n;
    return n;
  }

  struct Started {
    std::shared_ptr<Call> call;
    Sink* sink;
  };
  Started Start(Command command, CallOptions options) {
    Sink* sink = sinks_.emplace_back(std::make_unique<Sink>()).get();
    std::shared_ptr<Call> call = dispatcher_->NewCall(std::move(options), sink);
    call->Start(std::move(command));
    return Started{std::move(call), sink};
  }
  absl::StatusOr<Result> Run(Command command, CallOptions options) {
    return Start(std::move(command), std::move(options)).sink->Wait();
  }
  absl::StatusOr<Result> Run(CommandRequest request, CachePolicy cache) {
    CallOptions options;
    options.cache = cache;
    return Run(Prepare(std::move(request)), std::move(options));
  }

  // The engine tells a running command's sink its end from a task on its loop, and that
  // task's reference to the call goes only after the sink's OnFinished returns: a round
  // through the loop lets it go.
  void FlushEngineLoop() { engine_->AwaitLoop(); }

  int64_t CacheEntries() {
    Dispatcher::Stats stats = dispatcher_->stats();
    return stats.cache.has_value() ? stats.cache->entries : -1;
  }

  testing::ScopedTempDir dir_{"dispatcher_test"};
  const std::string runs_path_ = dir_.path() + "/runs";
  testing::ManualClock clock_;
  RequestPolicy policy_;
  CacheSettings cache_;
  // Sinks outlive the engine: a command a failed test left running still reports to one.
  std::vector<std::unique_ptr<Sink>> sinks_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Dispatcher> dispatcher_;
};

// The sink hears OnStarted from the engine's loop, which can come before the thread in
// Start is back from the engine with its handle; input sent from that moment on reaches the
// command, in order. Which comes first is up to the kernel's scheduler: on one CPU, threads
// woken for the spawn and the start often run before the thread that woke them goes on,
// and many sessions make that near certain.
TEST_F(DispatcherTest, ASessionsInputSentOnItsStartReachesTheCommand) {
  testing::ScopedSingleCpu one_cpu;
  constexpr int kSessions = 100;
  for (int i = 0; i < kSessions; ++i) {
    CommandRequest request;
    request.argv = {"/bin/cat"};
    Command command = Prepare(std::move(request));
    command.keep_stdin_open = true;
    command.stream_output = true;
    command.limits.timeout = absl::Seconds(10);  // Input lost: cat waits for it until then.
    CallOptions options;
    options.shape = CallShape::kSession;
    Sink* sink = sinks_.emplace_back(std::make_unique<Sink>()).get();
    std::shared_ptr<Call> call = dispatcher_->NewCall(std::move(options), sink);
    const std::string input = absl::StrCat("session ", i, "\n");
    sink->InputOnStart(call, input);
    call->Start(std::move(command));
    absl::StatusOr<Result> result = sink->Wait();
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->termination, Termination::kExited) << "session " << i;
    ASSERT_EQ(sink->output(OutputStream::kStdout), input) << "session " << i;
  }
}

TEST_F(DispatcherTest, PrepareNamesThePoolsThereAreWhenThePoolIsUnknown) {
  CommandRequest request;
  request.argv = {"/bin/true"};
  absl::StatusOr<Command> command = dispatcher_->Prepare(request, "nosuch");
  ASSERT_FALSE(command.ok());
  EXPECT_EQ(command.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(command.status().message(), HasSubstr("\"nosuch\""));
  EXPECT_THAT(command.status().message(), HasSubstr("none (start it with --pools_config)"));
  EXPECT_TRUE(dispatcher_->Prepare(request, "").ok());
}

// ---- Cache policies ----

TEST_F(DispatcherTest, ReadWriteStoresACleanSuccessAndAnswersTheNextCallWithoutRunning) {
  absl::StatusOr<Result> first = Run(Counted("echo hello"), CachePolicy::kReadWrite);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->cache_hit);
  EXPECT_EQ(first->stdout_data, "hello\n");
  EXPECT_EQ(CacheEntries(), 1);

  absl::StatusOr<Result> second = Run(Counted("echo hello"), CachePolicy::kReadWrite);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->cache_hit);
  EXPECT_EQ(second->stdout_data, "hello\n");
  EXPECT_EQ(second->termination, Termination::kExited);
  EXPECT_EQ(second->status.code, 0);
  EXPECT_EQ(second->cache_age, absl::ZeroDuration());  // The cache's clock has not moved.
  EXPECT_EQ(Runs(), 1);
}

TEST_F(DispatcherTest, ReadOnlyAnswersFromTheCacheButNeverStores) {
  for (int i = 1; i <= 2; ++i) {
    absl::StatusOr<Result> result = Run(Counted("echo hello"), CachePolicy::kReadOnly);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->cache_hit);
    EXPECT_EQ(Runs(), i);
  }
  EXPECT_EQ(CacheEntries(), 0);

  ASSERT_TRUE(Run(Counted("echo hello"), CachePolicy::kReadWrite).ok());
  EXPECT_EQ(Runs(), 3);
  absl::StatusOr<Result> hit = Run(Counted("echo hello"), CachePolicy::kReadOnly);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_TRUE(hit->cache_hit);
  EXPECT_EQ(hit->stdout_data, "hello\n");
  EXPECT_EQ(Runs(), 3);
}

TEST_F(DispatcherTest, RefreshAlwaysRunsAndStoresWhatItRan) {
  // Prints which run this is, so the stored result tells which run it came from.
  const std::string script = absl::StrCat("/usr/bin/wc -l < ", runs_path_);
  for (int i = 1; i <= 2; ++i) {
    absl::StatusOr<Result> result = Run(Counted(script), CachePolicy::kRefresh);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->cache_hit);
    EXPECT_EQ(result->stdout_data, absl::StrCat(i, "\n"));
    EXPECT_EQ(CacheEntries(), 1);
  }
  absl::StatusOr<Result> hit = Run(Counted(script), CachePolicy::kReadWrite);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_TRUE(hit->cache_hit);
  EXPECT_EQ(hit->stdout_data, "2\n");  // The second refresh replaced the first's entry.
  EXPECT_EQ(Runs(), 2);
}

TEST_F(DispatcherTest, OffNeitherReadsNorStores) {
  ASSERT_TRUE(Run(Counted("echo hello"), CachePolicy::kReadWrite).ok());
  ASSERT_EQ(CacheEntries(), 1);
  for (int i = 2; i <= 3; ++i) {
    absl::StatusOr<Result> result = Run(Counted("echo hello"), CachePolicy::kOff);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->cache_hit);
    EXPECT_EQ(Runs(), i);
  }
  EXPECT_EQ(dispatcher_->stats().cache->hits, 0);
}

TEST_F(DispatcherTest, AFailedRunIsNotStored) {
  for (int i = 1; i <= 2; ++i) {
    absl::StatusOr<Result> result = Run(Counted("echo hello; exit 1"), CachePolicy::kReadWrite);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->status.code, 1);
    EXPECT_FALSE(result->cache_hit);
    EXPECT_EQ(Runs(), i);
  }
  EXPECT_EQ(CacheEntries(), 0);
}

TEST_F(DispatcherTest, WithoutACacheAPolicyIsAFailedPrecondition) {
  cache_.max_bytes = 0;
  NewDispatcher();
  EXPECT_FALSE(dispatcher_->stats().cache.has_value());
  for (CachePolicy policy :
       {CachePolicy::kReadWrite, CachePolicy::kReadOnly, CachePolicy::kRefresh}) {
    absl::StatusOr<Result> result = Run(Counted("echo hello"), policy);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(result.status().message(), HasSubstr("--cache_max_bytes=0"));
  }
  EXPECT_EQ(Runs(), 0);
  absl::StatusOr<Result> off = Run(Counted("echo hello"), CachePolicy::kOff);
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->stdout_data, "hello\n");
}

TEST_F(DispatcherTest, ACacheTtlBelowZeroOrAboveTheMaximumIsInvalid) {
  cache_.max_ttl = absl::Hours(1);
  NewDispatcher();
  for (absl::Duration ttl : {absl::Seconds(-1), absl::Hours(1) + absl::Seconds(1)}) {
    absl::StatusOr<Result> result = Run(Prepare(Counted("echo hello")), ReadWrite(ttl));
    ASSERT_FALSE(result.ok()) << ttl;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr("--max_cache_ttl"));
  }
  EXPECT_EQ(Runs(), 0);

  EXPECT_TRUE(Run(Prepare(Counted("echo hello")), ReadWrite(absl::Hours(1))).ok());
}

TEST_F(DispatcherTest, AnEntryIsUsedWithinItsTtlOnTheCacheClockAndNotPastIt) {
  const absl::Duration ttl = absl::Seconds(10);
  ASSERT_TRUE(Run(Prepare(Counted("echo hello")), ReadWrite(ttl)).ok());

  clock_.Advance(absl::Seconds(9));
  absl::StatusOr<Result> hit = Run(Prepare(Counted("echo hello")), ReadWrite(ttl));
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_TRUE(hit->cache_hit);
  EXPECT_EQ(hit->cache_age, absl::Seconds(9));
  EXPECT_EQ(Runs(), 1);

  clock_.Advance(absl::Seconds(2));
  absl::StatusOr<Result> expired = Run(Prepare(Counted("echo hello")), ReadWrite(ttl));
  ASSERT_TRUE(expired.ok()) << expired.status();
  EXPECT_FALSE(expired->cache_hit);
  EXPECT_EQ(Runs(), 2);
  EXPECT_EQ(dispatcher_->stats().cache->expirations, 1);
}

TEST_F(DispatcherTest, AZeroTtlTakesTheDefaultTtl) {
  cache_.default_ttl = absl::Minutes(1);
  NewDispatcher();
  ASSERT_TRUE(Run(Counted("echo hello"), CachePolicy::kReadWrite).ok());
  clock_.Advance(absl::Seconds(59));
  absl::StatusOr<Result> hit = Run(Counted("echo hello"), CachePolicy::kReadWrite);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_TRUE(hit->cache_hit);
  clock_.Advance(absl::Seconds(2));
  absl::StatusOr<Result> expired = Run(Counted("echo hello"), CachePolicy::kReadWrite);
  ASSERT_TRUE(expired.ok()) << expired.status();
  EXPECT_FALSE(expired->cache_hit);
  EXPECT_EQ(Runs(), 2);
}

// ---- Single flight ----

TEST_F(DispatcherTest, AnIdenticalCallWhileOneRunsGetsItsResultWithoutRunning) {
  Gate gate(dir_.path() + "/gate");
  Started leader = Start(Prepare(Gated(gate)), ReadWrite());
  Started waiter = Start(Prepare(Gated(gate)), ReadWrite());
  EXPECT_FALSE(waiter.sink->finished());
  // The waiter holds a queue place, as a queued command would.
  Engine::Stats engine = dispatcher_->stats().engine;
  EXPECT_EQ(engine.running, 1);
  EXPECT_EQ(engine.queued, 1u);

  gate.Open(0);
  absl::StatusOr<Result> led = leader.sink->Wait();
  absl::StatusOr<Result> shared = waiter.sink->Wait();
  ASSERT_TRUE(led.ok()) << led.status();
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_FALSE(led->cache_hit);
  EXPECT_TRUE(shared->cache_hit);
  EXPECT_EQ(shared->stdout_data, "hi\n");
  EXPECT_EQ(shared->status.code, 0);
  EXPECT_EQ(Runs(), 1);
  EXPECT_EQ(dispatcher_->stats().engine.queued, 0u);
}

TEST_F(DispatcherTest, AWaiterTakesTheLastQueuePlaceAndTheNextIdenticalCallIsRefused) {
  Engine::Options options;
  options.max_concurrency = 1;
  options.max_queue = 1;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  Gate gate(dir_.path() + "/gate");
  Started leader = Start(Prepare(Gated(gate)), ReadWrite());
  Started waiter = Start(Prepare(Gated(gate)), ReadWrite());
  Started third = Start(Prepare(Gated(gate)), ReadWrite());

  ASSERT_TRUE(third.sink->finished());  // Refused at once, on this thread.
  absl::StatusOr<Result> refused = third.sink->Wait();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_GT(PushbackMs(refused.status()), 0) << refused.status();
  EXPECT_FALSE(waiter.sink->finished());

  gate.Open(0);
  ASSERT_TRUE(leader.sink->Wait().ok());
  absl::StatusOr<Result> shared = waiter.sink->Wait();
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_TRUE(shared->cache_hit);
  EXPECT_EQ(Runs(), 1);
}

TEST_F(DispatcherTest, ACancelledWaiterEndsCancelledAndGivesBackItsQueuePlace) {
  Engine::Options options;
  options.max_concurrency = 1;
  options.max_queue = 1;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  Gate gate(dir_.path() + "/gate");
  Started leader = Start(Prepare(Gated(gate)), ReadWrite());
  Started cancelled = Start(Prepare(Gated(gate)), ReadWrite());
  ASSERT_EQ(dispatcher_->stats().engine.queued, 1u);

  cancelled.call->Cancel();
  ASSERT_TRUE(cancelled.sink->finished());  // Ended at once, on this thread.
  EXPECT_EQ(cancelled.sink->Wait().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(dispatcher_->stats().engine.queued, 0u);

  // The place is free for the next identical call, which waits in its turn.
  Started next = Start(Prepare(Gated(gate)), ReadWrite());
  EXPECT_FALSE(next.sink->finished());
  EXPECT_EQ(dispatcher_->stats().engine.queued, 1u);

  gate.Open(0);
  ASSERT_TRUE(leader.sink->Wait().ok());
  absl::StatusOr<Result> shared = next.sink->Wait();
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_TRUE(shared->cache_hit);
  EXPECT_EQ(cancelled.sink->finishes(), 1);  // The landing flight passed it by.
  EXPECT_EQ(Runs(), 1);
}

TEST_F(DispatcherTest, WhenTheLeaderFailsTheWaiterRunsItself) {
  Gate gate(dir_.path() + "/gate");
  Started leader = Start(Prepare(Gated(gate)), ReadWrite());
  Started waiter = Start(Prepare(Gated(gate)), ReadWrite());
  ASSERT_EQ(dispatcher_->stats().engine.queued, 1u);

  gate.Open(1);
  absl::StatusOr<Result> failed = leader.sink->Wait();
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->status.code, 1);
  // The waiter runs now, blocked on the gate in its turn: not answered with the failure.
  EXPECT_FALSE(waiter.sink->finished());

  gate.Open(0);
  absl::StatusOr<Result> own = waiter.sink->Wait();
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_FALSE(own->cache_hit);
  EXPECT_EQ(own->status.code, 0);
  EXPECT_EQ(Runs(), 2);
  EXPECT_EQ(dispatcher_->stats().engine.queued, 0u);
  EXPECT_EQ(CacheEntries(), 1);  // The waiter's own success, stored.
}

TEST_F(DispatcherTest, AWaiterWhoseOutputCapTheResultExceedsRunsItself) {
  Gate gate(dir_.path() + "/gate");
  Started leader = Start(Prepare(Gated(gate)), ReadWrite());
  // The same key (the cap is not in it), but "hi\n" would have been cut to one byte.
  CommandRequest capped = Gated(gate);
  capped.max_output_bytes = 1;
  Started waiter = Start(Prepare(capped), ReadWrite());
  ASSERT_EQ(dispatcher_->stats().engine.queued, 1u);

  gate.Open(0);
  ASSERT_TRUE(leader.sink->Wait().ok());
  EXPECT_FALSE(waiter.sink->finished());  // Running, blocked on the gate in its turn.
  gate.Open(0);
  absl::StatusOr<Result> own = waiter.sink->Wait();
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_FALSE(own->cache_hit);
  EXPECT_EQ(own->termination, Termination::kOutputLimitExceeded);
  EXPECT_EQ(own->stdout_data, "h");
  EXPECT_EQ(Runs(), 2);
}

TEST_F(DispatcherTest, ACancelledLeaderLeavesItsWaiterToRunItself) {
  Gate gate(dir_.path() + "/gate");
  Started leader = Start(Prepare(Gated(gate)), ReadWrite());
  Started waiter = Start(Prepare(Gated(gate)), ReadWrite());
  ASSERT_EQ(dispatcher_->stats().engine.queued, 1u);

  leader.call->Cancel();
  absl::StatusOr<Result> cancelled = leader.sink->Wait();
  EXPECT_TRUE(!cancelled.ok() || cancelled->termination == Termination::kCancelled)
      << TerminationName(cancelled->termination);
  EXPECT_FALSE(waiter.sink->finished());

  gate.Open(0);
  absl::StatusOr<Result> own = waiter.sink->Wait();
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_FALSE(own->cache_hit);
  EXPECT_EQ(own->stdout_data, "hi\n");
}

// ---- The memory budget, as the dispatcher applies it ----

TEST_F(DispatcherTest, PastTheBudgetACallIsRefusedUntilAnEarlierCallIsLetGo) {
  ASSERT_EQ(Restart(Engine::Options{}, /*memory_budget_bytes=*/3 * kMiB), absl::OkStatus());
  Gate gate(dir_.path() + "/gate");
  CommandRequest gated = Gated(gate);
  gated.max_output_bytes = kMiB;
  Command held_command = Prepare(gated);
  ASSERT_EQ(Dispatcher::WorstCase(held_command, CallShape::kUnary), 2 * kMiB);
  Started held = Start(std::move(held_command), CallOptions{});
  EXPECT_EQ(dispatcher_->stats().memory_in_use, 2 * kMiB);
  EXPECT_EQ(dispatcher_->stats().memory_limit, 3 * kMiB);

  // Another 2 MiB would take the budget past its 3.
  CommandRequest other = Counted("echo other");
  other.max_output_bytes = kMiB;
  Started refused = Start(Prepare(other), CallOptions{});
  ASSERT_TRUE(refused.sink->finished());  // Refused at once, on this thread.
  absl::Status status = refused.sink->Wait().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(status.message(), HasSubstr("--memory_budget_bytes"));
  EXPECT_GT(PushbackMs(status), 0) << status;
  EXPECT_EQ(dispatcher_->stats().memory_in_use, 2 * kMiB);

  gate.Open(0);
  ASSERT_TRUE(held.sink->Wait().ok());
  // Until the transport lets go of the call, its result may still be on the server.
  EXPECT_EQ(dispatcher_->stats().memory_in_use, 2 * kMiB);
  held.call.reset();
  FlushEngineLoop();
  EXPECT_EQ(dispatcher_->stats().memory_in_use, 0);

  absl::StatusOr<Result> admitted = Run(Prepare(other), CallOptions{});
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  EXPECT_EQ(admitted->stdout_data, "other\n");
  EXPECT_EQ(Runs(), 2);  // The held call and the admitted one; the refused one never ran.
}

TEST_F(DispatcherTest, ACallGivenItsReservationReservesNoMore) {
  ASSERT_EQ(Restart(Engine::Options{}, /*memory_budget_bytes=*/3 * kMiB), absl::OkStatus());
  // As a batch does for an item: reserved before the call starts. Reserving its 2 MiB worst
  // case again would take the budget past its 3.
  absl::StatusOr<MemoryGrant> grant = dispatcher_->budget().Reserve(2 * kMiB, "a batch item");
  ASSERT_TRUE(grant.ok()) << grant.status();
  CommandRequest request = Counted("echo item");
  request.max_output_bytes = kMiB;
  CallOptions options;
  options.grant = *std::move(grant);
  Started item = Start(Prepare(request), std::move(options));
  absl::StatusOr<Result> result = item.sink->Wait();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "item\n");
  EXPECT_EQ(dispatcher_->stats().memory_in_use, 2 * kMiB);  // The grant, held by the call.
  item.call.reset();
  FlushEngineLoop();
  EXPECT_EQ(dispatcher_->stats().memory_in_use, 0);
}

// ---- A cache hit streamed ----

class DispatcherReplayTest : public DispatcherTest {
 protected:
  // Stores the script's result with a unary call, and prepares the same command as a
  // stream asking for `kChunk`-byte chunks.
  void SetUp() override {
    DispatcherTest::SetUp();
    if (HasFatalFailure()) return;
    CommandRequest request;
    request.argv = {"/bin/sh", "-c", "/usr/bin/seq 1 2000; echo done >&2"};
    absl::StatusOr<Result> stored = Run(request, CachePolicy::kReadWrite);
    ASSERT_TRUE(stored.ok()) << stored.status();
    ASSERT_FALSE(stored->cache_hit);
    stdout_ = stored->stdout_data;
    stderr_ = stored->stderr_data;
    ASSERT_GT(stdout_.size(), 4 * kChunk);
    ASSERT_EQ(stderr_, "done\n");
    // The storing call's memory is back once the loop has let go of it.
    FlushEngineLoop();
    ASSERT_EQ(dispatcher_->stats().memory_in_use, 0);

    request.streamed = true;
    request.stream_chunk_bytes = kChunk;
    command_ = Prepare(request);
    command_.stream_output = true;
  }

  // A streaming call of command_ whose sink pauses it at its first chunk.
  Started StartPausedReplay() {
    CallOptions options;
    options.shape = CallShape::kStream;
    options.cache = CachePolicy::kReadWrite;
    Sink* sink = sinks_.emplace_back(std::make_unique<Sink>()).get();
    std::shared_ptr<Call> call = dispatcher_->NewCall(std::move(options), sink);
    sink->PauseOnFirstOutput(call);
    call->Start(command_);
    return Started{std::move(call), sink};
  }

  static constexpr int64_t kChunk = 1000;
  std::string stdout_, stderr_;
  Command command_;
};

TEST_F(DispatcherReplayTest, OutputComesInChunksInOrderAndStopsWhilePaused) {
  Started replay = StartPausedReplay();
  // The replay ran on this thread until the sink paused it: one chunk, nothing after.
  EXPECT_TRUE(replay.sink->started());
  ASSERT_EQ(replay.sink->chunks().size(), 1u);
  EXPECT_FALSE(replay.sink->finished());

  replay.call->SetOutputPaused(false);
  absl::StatusOr<Result> result = replay.sink->Wait();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->cache_hit);
  EXPECT_EQ(result->status.code, 0);
  // The output came as chunks; the end carries none of it again.
  EXPECT_EQ(result->stdout_data, "");
  EXPECT_EQ(result->stderr_data, "");

  std::vector<Sink::Chunk> chunks = replay.sink->chunks();
  for (const Sink::Chunk& chunk : chunks) {
    EXPECT_GT(chunk.data.size(), 0u);
    EXPECT_LE(chunk.data.size(), static_cast<size_t>(kChunk));
  }
  EXPECT_TRUE(replay.sink->output(OutputStream::kStdout) == stdout_)
      << replay.sink->output(OutputStream::kStdout).size() << " bytes of " << stdout_.size();
  EXPECT_EQ(replay.sink->output(OutputStream::kStderr), stderr_);
  EXPECT_EQ(replay.sink->finishes(), 1);
}

TEST_F(DispatcherReplayTest, CancelDuringAPausedReplayEndsItCancelled) {
  const int64_t worst_case = Dispatcher::WorstCase(command_, CallShape::kStream);
  Started replay = StartPausedReplay();
  ASSERT_EQ(replay.sink->chunks().size(), 1u);
  // The call's own reservation, and the entry's output held for the replay.
  EXPECT_EQ(dispatcher_->stats().memory_in_use,
            worst_case + static_cast<int64_t>(stdout_.size() + stderr_.size()));

  replay.call->Cancel();
  ASSERT_TRUE(replay.sink->finished());  // Ended at once, on this thread.
  EXPECT_EQ(replay.sink->Wait().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(replay.sink->chunks().size(), 1u);
  EXPECT_EQ(dispatcher_->stats().memory_in_use, worst_case);  // The output is let go.
  replay.call.reset();
  EXPECT_EQ(dispatcher_->stats().memory_in_use, 0);
}

// Only a waiter takes a queue place: a leader is admitted like any call (here with no queue).
TEST_F(DispatcherTest, AReadWriteLeaderRunsOnAnIdleEngineWithNoQueue) {
  Engine::Options options;
  options.max_queue = 0;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  absl::StatusOr<Result> off = Run(Counted("echo hello"), CachePolicy::kOff);
  EXPECT_TRUE(off.ok()) << off.status();
  absl::StatusOr<Result> rw = Run(Counted("echo hello"), CachePolicy::kReadWrite);
  EXPECT_TRUE(rw.ok()) << rw.status();
}

// A leader goes through the engine's admission, shedding included, as a call without cache
// does: a high-priority call displaces a lower queued command from a full queue.
class DispatcherShedTest : public DispatcherTest,
                           public ::testing::WithParamInterface<CachePolicy> {};

TEST_P(DispatcherShedTest, AHighPriorityCallShedsALowerQueuedCommand) {
  Engine::Options options;
  options.max_concurrency = 1;
  options.max_queue = 1;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  Gate gate(dir_.path() + "/gate");
  Started blocker = Start(Prepare(Gated(gate)), CallOptions{});
  CommandRequest low = Counted("echo low");
  low.priority = 0;
  Started queued = Start(Prepare(low), CallOptions{});
  ASSERT_EQ(dispatcher_->stats().engine.queued, 1u);
  CommandRequest high = Counted("echo high");
  high.priority = 2;
  CallOptions urgent_options;
  urgent_options.cache = GetParam();
  Started urgent = Start(Prepare(high), std::move(urgent_options));
  ASSERT_TRUE(queued.sink->finished()) << "the low-priority command was not shed";
  EXPECT_EQ(queued.sink->Wait().status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(urgent.sink->finished())
      << "the high-priority call was refused: " << urgent.sink->Wait().status();
  gate.Open(0);
  (void)blocker.sink->Wait();
  EXPECT_TRUE(urgent.sink->Wait().ok());
}

INSTANTIATE_TEST_SUITE_P(Policies, DispatcherShedTest,
                         ::testing::Values(CachePolicy::kOff, CachePolicy::kReadWrite));

// A stream's output goes to its reader, not into its result: such a result is never stored,
// whichever policy writes.
class DispatcherStreamStoreTest : public DispatcherTest,
                                  public ::testing::WithParamInterface<CachePolicy> {};

TEST_P(DispatcherStreamStoreTest, AStreamedRunStoresNothing) {
  CommandRequest request = Counted("echo hello");
  request.streamed = true;
  Command command = Prepare(request);
  command.stream_output = true;
  CallOptions options;
  options.shape = CallShape::kStream;
  options.cache = GetParam();
  Started streamed = Start(std::move(command), std::move(options));
  absl::StatusOr<Result> r = streamed.sink->Wait();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(streamed.sink->output(OutputStream::kStdout), "hello\n");
  EXPECT_EQ(r->stdout_data, "");
  EXPECT_EQ(CacheEntries(), 0) << "a streamed run was stored";
  absl::StatusOr<Result> unary = Run(Counted("echo hello"), CachePolicy::kReadWrite);
  ASSERT_TRUE(unary.ok()) << unary.status();
  EXPECT_EQ(unary->stdout_data, "hello\n") << "cache_hit=" << unary->cache_hit;
  EXPECT_EQ(Runs(), 2);
}

INSTANTIATE_TEST_SUITE_P(Policies, DispatcherStreamStoreTest,
                         ::testing::Values(CachePolicy::kReadWrite, CachePolicy::kRefresh));

}  // namespace
}  // namespace execd::core
