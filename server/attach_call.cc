#include "server/attach_call.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/engine.h"
#include "core/validate.h"
#include "server/call_base.h"
#include "server/convert.h"
#include "server/event_queue.h"
#include "server/executor_service.h"

namespace execd::server {
namespace {

// One session. Reads are issued one at a time and only while the child is running and
// less than kMaxQueuedStdin of earlier stdin waits for it: a child that reads slowly stops
// the server reading, and gRPC flow control then stops the client. Writes go through an
// EventWriter, one at a time, which pauses the child's output as ExecuteStream's does. The call
// finishes once the engine has reported the end and every event is written, never before: no engine
// callback can reach a finished reactor.
class AttachCall final : public grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>,
                         public CallBase {
 public:
  AttachCall(ExecutorService& service, grpc::CallbackServerContext* context, std::string caller)
      : CallBase(service, context, core::Rpc::kAttach, std::move(caller)) {
    writer_.set_metrics(&service.metrics());
    reading_ = true;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    bool first;
    {
      absl::MutexLock lock(&mu_);
      first = !got_start_;
      got_start_ = true;
      // A message still being handled keeps reading_ set: request_ is its buffer, and a
      // read started meanwhile (MaybeRead from OnStdinWritten, on the loop thread) would
      // overwrite it. The first message is the exception: nothing reads before the
      // command is submitted.
      if (first || !ok) reading_ = false;
    }
    if (first) {
      Start(ok);
      return;
    }
    if (!ok) {
      // The client half-closed (or went away, which OnCancel handles): end of input.
      {
        absl::MutexLock lock(&mu_);
        client_done_ = true;
      }
      CloseStdin();
      return;
    }
    Handle(request_);
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
    }
    MaybeRead();
  }

  void OnWriteDone(bool ok) override { writer_.WriteDone(ok); }

  void OnCancel() override { Cancel(); }

  void OnDone() override { delete this; }

  // core::CallSink.
  void OnStarted(pid_t pid, absl::Duration queued) override {
    v1::AttachEvent event;
    event.mutable_started()->set_pid(pid);
    DurationToProto(queued, event.mutable_started()->mutable_queued());
    Enqueue(std::move(event));
    {
      absl::MutexLock lock(&mu_);
      started_ = true;
    }
    MaybeRead();
  }

  void OnOutput(core::OutputStream stream, absl::string_view data) override {
    v1::AttachEvent event;
    OutputToProto(stream, data, event.mutable_output());
    Enqueue(std::move(event));
  }

  void OnStdinWritten(size_t bytes) override {
    {
      absl::MutexLock lock(&mu_);
      queued_stdin_ -= bytes;
    }
    MaybeRead();
  }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    grpc::Status status;
    bool report;
    {
      absl::MutexLock lock(&mu_);
      report = result.ok() && error_.ok();
      status = !error_.ok() ? ToGrpcStatus(error_)
                            : (result.ok() ? grpc::Status::OK : CallStatus(result.status()));
    }
    Report(result, static_cast<absl::StatusCode>(status.error_code()));
    if (report) {
      v1::AttachEvent event;
      ToResponse(*std::move(result), event.mutable_exited());
      Enqueue(std::move(event));
    }
    {
      absl::MutexLock lock(&mu_);
      engine_done_ = true;
    }
    writer_.Close(std::move(status));
  }

 private:
  // More stdin than this waiting for the child stops the server reading messages.
  static constexpr int64_t kMaxQueuedStdin = 1 << 20;

  // The first message: validate and run the command, or end the call. Nothing is written
  // (and so the call cannot finish) before this is done with the reactor.
  void Start(bool ok) {
    absl::StatusOr<core::Command> command =
        ok ? Prepare()
           : absl::InvalidArgumentError(
                 "the call ended before its first message; "
                 "send AttachRequest.start with the command first");
    if (command.ok()) {
      Run(*std::move(command), std::move(options_));
      MaybeRead();
    } else {
      OnFinished(command.status());
    }
    writer_.Open();
  }

  absl::StatusOr<core::Command> Prepare() {
    if (!request_.has_start()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the first AttachRequest must be start (the command to run), got ",
                       RequestKind(request_)));
    }
    v1::ExecuteRequest& start = *request_.mutable_start();
    if (!start.pool().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "start.pool \"", start.pool(),
          "\": Attach runs a fresh process and does not use worker pools; leave pool unset "
          "(ExecuteStream runs in pools)"));
    }
    if (start.cache_policy() != v1::CACHE_OFF) {
      return absl::InvalidArgumentError(
          "start.cache_policy: an interactive session's output depends on its input, so Attach "
          "does not use the result cache; leave cache_policy unset");
    }
    if (request_.has_terminal()) {
      if (start.pipe_to_size() > 0) {
        return absl::InvalidArgumentError(
            "terminal: a pipeline (pipe_to) cannot run on a pseudo-terminal; leave one unset");
      }
      absl::StatusOr<core::TerminalSize> size = TerminalSizeFromProto(request_.terminal());
      if (!size.ok()) return size.status();
      terminal_ = *size;
    }
    absl::StatusOr<core::Command> command =
        CallBase::Prepare(start, core::CallShape::kSession, &options_);
    if (!command.ok()) return command.status();
    command->keep_stdin_open = true;
    command->terminal = terminal_;
    writer_.set_chunk_bytes(static_cast<size_t>(command->stream_chunk_bytes));
    writer_.set_accept_lz4(accept_lz4());
    {
      absl::MutexLock lock(&mu_);
      // Reported through OnStdinWritten like the rest.
      queued_stdin_ = static_cast<int64_t>(command->stdin_data.size());
      if (!command->stdin_data.empty()) at_line_start_ = command->stdin_data.back() == '\n';
    }
    return command;
  }

  // A message after the start.
  void Handle(v1::AttachRequest& request) {
    if (request.has_terminal()) {
      Fail(absl::InvalidArgumentError(
          "terminal is for the first message only; send resize to change the size"));
      return;
    }
    std::shared_ptr<core::Call> running = call();
    bool stdin_closed;
    {
      absl::MutexLock lock(&mu_);
      stdin_closed = stdin_closed_;
    }
    switch (request.request_case()) {
      case v1::AttachRequest::kStdin:
        if (stdin_closed) {
          Fail(absl::InvalidArgumentError(absl::StrCat(
              "stdin (", request.stdin().size(),
              " bytes) after close_stdin: the child's stdin is closed; send all input before "
              "close_stdin")));
          return;
        }
        {
          absl::MutexLock lock(&mu_);
          queued_stdin_ += static_cast<int64_t>(request.stdin().size());
          if (!request.stdin().empty()) at_line_start_ = request.stdin().back() == '\n';
        }
        running->WriteStdin(std::move(*request.mutable_stdin()));
        return;
      case v1::AttachRequest::kCloseStdin:
        CloseStdin();
        return;
      case v1::AttachRequest::kResize: {
        if (!terminal_.has_value()) {
          Fail(absl::InvalidArgumentError(
              "resize: this session has no terminal; ask for one with `terminal` in the first "
              "message"));
          return;
        }
        absl::StatusOr<core::TerminalSize> size = TerminalSizeFromProto(request.resize());
        if (!size.ok()) {
          Fail(size.status());
          return;
        }
        running->ResizeTerminal(*size);
        return;
      }
      case v1::AttachRequest::kSignal:
        if (absl::Status s = running->Signal(request.signal()); !s.ok()) {
          Fail(s);
        }
        return;
      case v1::AttachRequest::kStart:
        Fail(absl::InvalidArgumentError(
            absl::StrCat("a second start: this session already runs \"", info_.argv0,
                         "\"; an Attach call runs one command (open another call for another)")));
        return;
      case v1::AttachRequest::REQUEST_NOT_SET:
        Fail(absl::InvalidArgumentError(
            "an AttachRequest with nothing set; send stdin, close_stdin or signal"));
        return;
    }
  }

  static std::string RequestKind(const v1::AttachRequest& request) {
    switch (request.request_case()) {
      case v1::AttachRequest::kStdin:
        return "stdin";
      case v1::AttachRequest::kCloseStdin:
        return "close_stdin";
      case v1::AttachRequest::kSignal:
        return "signal";
      case v1::AttachRequest::kResize:
        return "resize";
      default:
        return "an empty message";
    }
  }

  void CloseStdin() {
    std::shared_ptr<core::Call> running = call();
    std::string eof;
    {
      absl::MutexLock lock(&mu_);
      if (stdin_closed_) return;
      stdin_closed_ = true;
      // A terminal is not closed (that would hang up the session): its end-of-file
      // character ends the input, as Ctrl-D does; typed twice after a partial line, whose
      // first one only hands the line to the reader.
      if (terminal_.has_value()) eof = at_line_start_ ? "\x04" : "\x04\x04";
      queued_stdin_ += static_cast<int64_t>(eof.size());
    }
    if (running == nullptr) return;
    if (terminal_.has_value()) {
      running->WriteStdin(std::move(eof));
    } else {
      running->CloseStdin();
    }
  }

  static absl::StatusOr<core::TerminalSize> TerminalSizeFromProto(const v1::TerminalSize& size) {
    if (size.rows() < 1 || size.rows() > 65535 || size.columns() < 1 || size.columns() > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("terminal size ", size.rows(), "x",
                                                     size.columns(),
                                                     ": rows and columns must each be 1..65535"));
    }
    return core::TerminalSize{static_cast<int>(size.rows()), static_cast<int>(size.columns())};
  }

  // A protocol error after the start: the command is killed, and the call ends with
  // `status` once the engine has reaped it.
  void Fail(absl::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (!error_.ok()) return;
      error_ = std::move(status);
    }
    Cancel();
  }

  // Starts the next read when the session may take another message.
  void MaybeRead() {
    {
      absl::MutexLock lock(&mu_);
      if (reading_ || client_done_ || !started_ || !error_.ok() || engine_done_ ||
          queued_stdin_ > kMaxQueuedStdin) {
        return;
      }
      reading_ = true;
    }
    StartRead(&request_);
  }

  void Enqueue(v1::AttachEvent event) { writer_.Push(std::move(event)); }

  // Set while the first message is handled, before the call can report.
  std::optional<core::TerminalSize> terminal_;  // Then read-only.
  core::CallOptions options_;

  v1::AttachRequest request_;  // The message being read (one read at a time).

  absl::Mutex mu_;
  bool got_start_ ABSL_GUARDED_BY(mu_) = false;    // The first read completed.
  bool started_ ABSL_GUARDED_BY(mu_) = false;      // The engine reported the child running.
  bool reading_ ABSL_GUARDED_BY(mu_) = false;      // A read is in flight.
  bool client_done_ ABSL_GUARDED_BY(mu_) = false;  // The client half-closed.
  bool stdin_closed_ ABSL_GUARDED_BY(mu_) = false;
  int64_t queued_stdin_ ABSL_GUARDED_BY(mu_) = 0;   // Accepted, not yet written to the child.
  bool at_line_start_ ABSL_GUARDED_BY(mu_) = true;  // The last stdin byte was a newline.
  absl::Status error_ ABSL_GUARDED_BY(mu_);         // A protocol error ends the call with it.
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;   // The command is over.
  EventWriter<v1::AttachEvent> writer_{
      {.start_write = [this](const v1::AttachEvent* event) { StartWrite(event); },
       .finish = [this](const grpc::Status& status) { Finish(status); },
       .pause_output = [this](bool paused) { SetOutputPaused(paused); }},
      /*open=*/false};
};

}  // namespace

grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>* NewAttachCall(
    ExecutorService& service, grpc::CallbackServerContext* context, std::string caller) {
  return new AttachCall(service, context, std::move(caller));
}

}  // namespace execd::server
