// Fuzzes the bytes a persistent worker writes to its stdout: they are read frame by frame
// (ReadResponseFrame) as PersistentWorker reads them, arriving in pieces of any size.
// Whatever the bytes, reading ends with whole frames, a wait for more bytes, or an INTERNAL
// error; and the frames read do not depend on how the bytes were split.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/worker_frame.h"
#include "execd/worker/v1/worker.pb.h"

namespace {

using execd::worker::v1::WorkResponse;

void Check(bool ok) {
  if (!ok) std::abort();
}

// Feeds `bytes` in pieces of `piece` bytes, reading whole frames after each piece, until
// the end or an error. Returns what was read, serialised; `failed` tells how it ended.
std::vector<std::string> ReadAll(absl::string_view bytes, size_t piece, int64_t limit,
                                 bool& failed) {
  std::vector<std::string> frames;
  std::string in;
  failed = false;
  for (size_t at = 0; at < bytes.size() && !failed; at += piece) {
    absl::string_view next = bytes.substr(at, piece);
    in.append(next.data(), next.size());
    while (!in.empty()) {
      WorkResponse response;
      auto taken = execd::core::ReadResponseFrame(in, limit, response);
      if (!taken.ok()) {
        Check(taken.status().code() == absl::StatusCode::kInternal);
        Check(!taken.status().message().empty());
        failed = true;
        break;
      }
      if (*taken == 0) break;
      Check(*taken <= in.size());
      Check(*taken - 1 <= static_cast<uint64_t>(limit) + 10);
      frames.push_back(response.SerializeAsString());
      in.erase(0, *taken);
    }
  }
  return frames;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The first byte picks the frame limit (1 byte to 64 MiB) and the read size.
  const int64_t limit = int64_t{1} << (data[0] % 27);
  const size_t piece = 1 + data[0] / 27;
  absl::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);

  bool failed_whole, failed_pieces;
  std::vector<std::string> whole = ReadAll(bytes, bytes.size() + 1, limit, failed_whole);
  std::vector<std::string> pieces = ReadAll(bytes, piece, limit, failed_pieces);
  Check(failed_whole == failed_pieces);
  Check(whole == pieces);
  return 0;
}
