// execd-test-worker: a persistent worker (protos/execd/worker/v1/worker.proto) whose
// behaviour each request chooses with its first argument, for execd's tests:
//
//   exit N          answers with exit code N (an int32) and no output
//   crash           exits with status 3 without answering
//   hang            never answers, until the request is cancelled
//   sleep MS        waits MS milliseconds, then answers as the echo below; a cancel
//                   during the wait answers it as cancelled instead
//   stderr TEXT...  answers with exit code 0 and the remaining arguments, joined by
//                   spaces, as its stderr
//   garbage         writes 11 bytes 0xff to fd 1 (a frame size that does not parse),
//                   then answers normally
//   printstdout     writes "noise\n" to fd 1 outside the framing (a worker that printed
//                   to its stdout), then answers normally
//   pid             answers with its pid (decimal, no newline) on stdout
//   print           answers with "hello from print\n" on stdout (as echo_worker.py)
//   anything else   echo: exit code 0, stdout = stdin + "|" + the arguments joined by
//                   spaces
//
// "Answers normally" is exit code 0 and no output. A cancel for the request in flight
// (during hang or sleep) is answered promptly with { request_id, was_cancelled: true };
// any other cancel is ignored. The worker exits 0 at end of input and 1, with the reason
// on stderr, on input that is not well-formed frames.
//
// It is single-threaded: while a request waits it polls stdin, reads the frames that
// arrive and keeps requests other than a cancel for later (execd never sends them).

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include "execd/worker/v1/worker.pb.h"

namespace {

using execd::worker::v1::WorkRequest;
using execd::worker::v1::WorkResponse;
using Clock = std::chrono::steady_clock;

// protobuf does not parse messages of 2 GiB or more.
constexpr uint64_t kMaxFrameSize = (uint64_t{1} << 31) - 1;

[[noreturn]] void Die(std::string_view reason) {
  std::fprintf(stderr, "test_worker: %.*s\n", static_cast<int>(reason.size()), reason.data());
  std::_Exit(1);
}

// Writes all of data to fd, or dies.
void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      Die(std::string("write: ") + std::strerror(errno));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

void WriteFrame(const WorkResponse& response) {
  std::string body;
  if (!response.SerializeToString(&body)) Die("cannot serialise a WorkResponse");
  std::string frame;
  AppendVarint(body.size(), &frame);
  frame += body;
  WriteAll(STDOUT_FILENO, frame);
}

// The frames of fd 0: bytes read but not yet parsed, and requests put aside.
class Input {
 public:
  // Blocks until the next request and returns it; nullopt at end of input.
  std::optional<WorkRequest> Next() {
    if (!pending_.empty()) {
      WorkRequest request = std::move(pending_.front());
      pending_.pop_front();
      return request;
    }
    for (;;) {
      WorkRequest request;
      if (TakeBuffered(&request)) return request;
      if (!Fill()) return std::nullopt;
    }
  }

  // Waits until deadline (forever if nullopt) for a cancel of request_id. Returns true
  // when it was cancelled, false when the deadline passed. Other requests are kept for
  // Next(); other cancels are ignored. Exits 0 at end of input: nobody is waiting for
  // the answer.
  bool WaitForCancel(uint64_t request_id, std::optional<Clock::time_point> deadline) {
    for (;;) {
      WorkRequest request;
      while (TakeBuffered(&request)) {
        if (!request.cancel()) {
          pending_.push_back(std::move(request));
        } else if (request.request_id() == request_id) {
          return true;
        }
      }
      int timeout_ms = -1;
      if (deadline) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now());
        if (left.count() <= 0) return false;
        timeout_ms = static_cast<int>(std::min<int64_t>(left.count(), 60'000));
      }
      pollfd fd = {.fd = STDIN_FILENO, .events = POLLIN, .revents = 0};
      int ready = poll(&fd, 1, timeout_ms);
      if (ready < 0) {
        if (errno == EINTR) continue;
        Die(std::string("poll: ") + std::strerror(errno));
      }
      if (ready > 0 && !Fill()) std::exit(0);
    }
  }

 private:
  // Reads what fd 0 has (blocking if nothing). Returns false at end of input, which must
  // fall between frames.
  bool Fill() {
    char chunk[64 * 1024];
    for (;;) {
      ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
      if (n < 0) {
        if (errno == EINTR) continue;
        Die(std::string("read: ") + std::strerror(errno));
      }
      if (n == 0) {
        if (!buffer_.empty()) Die("end of input inside a frame");
        return false;
      }
      buffer_.append(chunk, static_cast<size_t>(n));
      return true;
    }
  }

  // Parses the first frame of the buffer into request, if it is complete.
  bool TakeBuffered(WorkRequest* request) {
    uint64_t size = 0;
    size_t pos = 0;
    for (;; ++pos) {
      if (pos == 10) Die("frame size longer than 10 bytes");
      if (pos == buffer_.size()) return false;
      auto byte = static_cast<unsigned char>(buffer_[pos]);
      size |= static_cast<uint64_t>(byte & 0x7f) << (7 * pos);
      if (!(byte & 0x80)) break;
    }
    ++pos;
    if (size > kMaxFrameSize) Die("frame too large");
    if (buffer_.size() - pos < size) return false;
    if (!request->ParseFromArray(buffer_.data() + pos, static_cast<int>(size))) {
      Die("frame does not parse as a WorkRequest");
    }
    buffer_.erase(0, pos + size);
    return true;
  }

  std::string buffer_;
  std::deque<WorkRequest> pending_;
};

std::string Join(const WorkRequest& request, int first) {
  std::string out;
  for (int i = first; i < request.arguments_size(); ++i) {
    if (i > first) out += ' ';
    out += request.arguments(i);
  }
  return out;
}

template <typename Int>
bool ParseInt(const WorkRequest& request, int index, Int* value) {
  if (index >= request.arguments_size()) return false;
  const std::string& text = request.arguments(index);
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return error == std::errc() && end == text.data() + text.size();
}

void Echo(const WorkRequest& request, WorkResponse* response) {
  response->set_stdout(request.stdin() + "|" + Join(request, 0));
}

// Fills in the answer to a request (its request_id is already set).
void Handle(const WorkRequest& request, Input* input, WorkResponse* response) {
  const std::string_view command =
      request.arguments_size() > 0 ? std::string_view(request.arguments(0)) : "";
  if (command == "exit") {
    int32_t code = 0;
    if (!ParseInt(request, 1, &code)) {
      response->set_exit_code(1);
      response->set_stderr("test_worker: exit needs an int32 argument\n");
      return;
    }
    response->set_exit_code(code);
  } else if (command == "crash") {
    _exit(3);
  } else if (command == "hang") {
    input->WaitForCancel(request.request_id(), std::nullopt);
    response->set_was_cancelled(true);
  } else if (command == "sleep") {
    int64_t ms = 0;
    if (!ParseInt(request, 1, &ms) || ms < 0) {
      response->set_exit_code(1);
      response->set_stderr("test_worker: sleep needs a number of milliseconds\n");
      return;
    }
    // Capped at about 11 days, so that the deadline cannot overflow.
    auto deadline = Clock::now() + std::chrono::milliseconds(std::min<int64_t>(ms, 1'000'000'000));
    if (input->WaitForCancel(request.request_id(), deadline)) {
      response->set_was_cancelled(true);
    } else {
      Echo(request, response);
    }
  } else if (command == "stderr") {
    response->set_stderr(Join(request, 1));
  } else if (command == "garbage") {
    WriteAll(STDOUT_FILENO, std::string(11, '\xff'));
  } else if (command == "printstdout") {
    WriteAll(STDOUT_FILENO, "noise\n");
  } else if (command == "pid") {
    response->set_stdout(std::to_string(getpid()));
  } else if (command == "print") {
    response->set_stdout("hello from print\n");
  } else {
    Echo(request, response);
  }
}

}  // namespace

int main() {
  GOOGLE_PROTOBUF_VERIFY_VERSION;
  // A closed stdout is an error from write(), not a silent death.
  signal(SIGPIPE, SIG_IGN);
  Input input;
  while (std::optional<WorkRequest> request = input.Next()) {
    // A cancel read here is for a request already answered.
    if (request->cancel()) continue;
    WorkResponse response;
    response.set_request_id(request->request_id());
    // request_id 0 is the health check: its answer is empty.
    if (request->request_id() != 0) Handle(*request, &input, &response);
    WriteFrame(response);
  }
  return 0;
}
