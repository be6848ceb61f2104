#include "server/convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include "absl/time/time.h"
#include "core/command.h"
#include "core/validate.h"

namespace execd::server {
namespace {

google::protobuf::Duration ToProto(absl::Duration d) {
  google::protobuf::Duration out;
  DurationToProto(d, &out);
  return out;
}

TEST(DurationToProtoTest, SplitsIntoSecondsAndNanosOfOneSign) {
  auto p = ToProto(absl::Seconds(3) + absl::Nanoseconds(250));
  EXPECT_EQ(p.seconds(), 3);
  EXPECT_EQ(p.nanos(), 250);
  p = ToProto(-(absl::Seconds(2) + absl::Milliseconds(500)));
  EXPECT_EQ(p.seconds(), -2);
  EXPECT_EQ(p.nanos(), -500'000'000);
  p = ToProto(absl::Milliseconds(-1));
  EXPECT_EQ(p.seconds(), 0);
  EXPECT_EQ(p.nanos(), -1'000'000);
}

TEST(DurationToProtoTest, KeepsLongDurationsAndRoundTrips) {
  const absl::Duration thousand_years = absl::Hours(24 * 365 * 1000) + absl::Nanoseconds(7);
  auto p = ToProto(thousand_years);
  EXPECT_EQ(p.seconds(), int64_t{3600} * 24 * 365 * 1000);
  EXPECT_EQ(p.nanos(), 7);
  for (absl::Duration d : {absl::ZeroDuration(), absl::Nanoseconds(1), absl::Seconds(-59),
                           absl::Hours(24 * 365 * 290), -thousand_years}) {
    EXPECT_EQ(DurationFromProto(ToProto(d)), d) << d;
  }
}

TEST(ResultToProtoTest, LeavesZeroDurationsUnsetAndReadsThemAsZero) {
  core::Result result;
  result.cache_hit = true;
  result.run = absl::Milliseconds(4);
  result.usage.user_cpu = absl::Microseconds(900);
  v1::ExecuteResponse response;
  ResultToProto(result, /*accept_lz4=*/false, absl::ZeroDuration(), &response);
  EXPECT_TRUE(response.cache_hit());
  EXPECT_TRUE(response.has_cache_age());  // A hit always says its age, even zero.
  EXPECT_FALSE(response.timings().has_queued());
  EXPECT_FALSE(response.timings().has_spawn());
  EXPECT_EQ(DurationFromProto(response.timings().spawn()), absl::ZeroDuration());
  EXPECT_EQ(DurationFromProto(response.timings().run()), absl::Milliseconds(4));
  EXPECT_EQ(DurationFromProto(response.usage().user_cpu()), absl::Microseconds(900));
  EXPECT_FALSE(response.usage().has_system_cpu());
  EXPECT_FALSE(response.timings().has_total());
}

TEST(CommandRequestFromProtoTest, EveryUnknownPriorityIsRejectedByValidation) {
  for (int priority :
       {std::numeric_limits<int>::min(), -1, 4, 7, std::numeric_limits<int>::max()}) {
    v1::ExecuteRequest request;
    request.add_argv("/bin/true");
    request.set_priority(static_cast<v1::Priority>(priority));
    auto command = core::ValidateRequest(CommandRequestFromProto(request), core::RequestPolicy());
    EXPECT_EQ(command.status().code(), absl::StatusCode::kInvalidArgument) << priority;
    EXPECT_THAT(command.status().message(), ::testing::HasSubstr("priority")) << priority;
  }
  v1::ExecuteRequest high;
  high.add_argv("/bin/true");
  high.set_priority(v1::PRIORITY_HIGH);
  auto command = core::ValidateRequest(CommandRequestFromProto(high), core::RequestPolicy());
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->priority, 2);
}

}  // namespace
}  // namespace execd::server
