// The per-call message allocator of Execute: holders (one protobuf Arena each) are reset
// and reused on the thread that released them, at most a bounded number per thread, and
// a reused holder gives fresh, empty messages.
#include "server/arena_allocator.h"

#include <string>
#include <thread>
#include <vector>

#include "execd/v1/execd.pb.h"
#include "gtest/gtest.h"

namespace execd::server {
namespace {

using Allocator = ArenaMessageAllocator<v1::ExecuteRequest, v1::ExecuteResponse>;
using Holder = grpc::MessageHolder<v1::ExecuteRequest, v1::ExecuteResponse>;

TEST(ArenaMessageAllocator, AReusedHolderGivesFreshMessages) {
  Allocator allocator;
  Holder* first = allocator.AllocateMessages();
  const int64_t live = Allocator::live_holders();
  first->request()->add_argv("/bin/echo");
  first->request()->set_stdin(std::string(10000, 's'));  // Past the first block.
  first->response()->set_stdout("out");
  first->Release();
  EXPECT_EQ(Allocator::live_holders(), live) << "released on this thread, it is kept";
  Holder* second = allocator.AllocateMessages();
  EXPECT_EQ(Allocator::live_holders(), live) << "and taken again, not a new one made";
  EXPECT_EQ(second->request()->argv_size(), 0);
  EXPECT_TRUE(second->request()->stdin().empty());
  EXPECT_TRUE(second->response()->stdout().empty());
  EXPECT_NE(second->request()->GetArena(), nullptr);
  second->Release();
}

TEST(ArenaMessageAllocator, KeepsAtMostSixteenPerThread) {
  Allocator allocator;
  std::vector<Holder*> held;
  for (int i = 0; i < 40; ++i) held.push_back(allocator.AllocateMessages());
  const int64_t in_use = Allocator::live_holders();
  for (Holder* h : held) h->Release();
  // This thread kept some before (the test above), and keeps at most 16 in all.
  EXPECT_LE(Allocator::live_holders(), in_use - 40 + 16);
  EXPECT_GE(Allocator::live_holders(), 16);
  // On another thread, whose spares start empty: releasing 20 leaves 16.
  std::thread other([&] {
    const int64_t before = Allocator::live_holders();
    std::vector<Holder*> mine;
    for (int i = 0; i < 20; ++i) mine.push_back(allocator.AllocateMessages());
    for (Holder* h : mine) h->Release();
    EXPECT_EQ(Allocator::live_holders(), before + 16);
  });
  other.join();
  // The thread's kept holders went with it.
  EXPECT_LE(Allocator::live_holders(), 16);
}

#if defined(__SANITIZE_ADDRESS__)
// Under ASan a finished call's messages are off limits, as freed memory would be: a late
// use is reported, not left to corrupt the call that reuses the holder.
TEST(ArenaMessageAllocatorDeathTest, ALateUseOfAReleasedCallsMessagesIsReported) {
  Allocator allocator;
  Holder* holder = allocator.AllocateMessages();
  v1::ExecuteResponse* response = holder->response();
  holder->Release();
  EXPECT_DEATH(response->set_exit_code(3), "use-after-poison");
}
#else
TEST(ArenaMessageAllocatorDeathTest, ALateUseOfAReleasedCallsMessagesIsReported) {
  GTEST_SKIP() << "SKIPPED: needs AddressSanitizer (run in the build-asan suite)";
}
#endif

}  // namespace
}  // namespace execd::server
