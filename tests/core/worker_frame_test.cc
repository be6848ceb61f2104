#include "core/worker_frame.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace execd::core {
namespace {

using ::testing::HasSubstr;

std::string Framed(const worker::v1::WorkResponse& response) {
  std::string out;
  AppendFrame(response, out);
  return out;
}

TEST(WorkerFrame, AFrameIsReadOnlyWhenWhole) {
  worker::v1::WorkResponse sent;
  sent.set_request_id(7);
  sent.set_stdout(std::string(300, 'x'));  // A two-byte header.
  // The frame, then an empty one.
  const std::string bytes = Framed(sent) + std::string(1, '\0');
  for (size_t n = 0; n < bytes.size() - 1; ++n) {
    worker::v1::WorkResponse response;
    auto taken = ReadResponseFrame(bytes.substr(0, n), 1 << 20, response);
    ASSERT_TRUE(taken.ok()) << n;
    EXPECT_EQ(*taken, 0u) << n;
  }
  worker::v1::WorkResponse response;
  auto taken = ReadResponseFrame(bytes, 1 << 20, response);
  ASSERT_TRUE(taken.ok());
  EXPECT_EQ(*taken, bytes.size() - 1);
  EXPECT_EQ(response.request_id(), 7u);
  EXPECT_EQ(response.stdout(), sent.stdout());
  taken = ReadResponseFrame(bytes.substr(*taken), 1 << 20, response);
  ASSERT_TRUE(taken.ok());
  EXPECT_EQ(*taken, 1u);
}

TEST(WorkerFrame, BytesThatBreakTheProtocolAreInternalErrors) {
  worker::v1::WorkResponse response;
  auto too_big = ReadResponseFrame("\x80\x80\x80\x01", 1 << 20, response);  // 2 MiB.
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(too_big.status().message(), HasSubstr("2097152 bytes (limit 1048576)"));
  auto long_header = ReadResponseFrame(std::string(10, '\xff'), 1 << 20, response);
  EXPECT_EQ(long_header.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(long_header.status().message(), HasSubstr("over 10 bytes"));
  auto not_a_response = ReadResponseFrame("\x02\x0f\xff", 1 << 20, response);  // Bad tag.
  EXPECT_EQ(not_a_response.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(not_a_response.status().message(), HasSubstr("not a WorkResponse"));
}

}  // namespace
}  // namespace execd::core
