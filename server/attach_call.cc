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
                         public core::Engine::Observer {
 public:
  AttachCall(ExecutorService& service, grpc::CallbackServerContext* context)
      : service_(service), context_(context), received_(absl::Now()) {
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

  void OnCancel() override {
    std::shared_ptr<core::Engine::Execution> execution;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      execution = execution_;
    }
    if (execution != nullptr) service_.engine().Cancel(execution);
  }

  void OnDone() override { delete this; }

  // core::Engine::Observer, on the engine's loop thread (OnFinished also on others).
  void OnStarted(pid_t pid, absl::Duration queued) override {
    v1::AttachEvent event;
    event.mutable_started()->set_pid(pid);
    DurationToProto(queued, event.mutable_started()->mutable_queued());
    Enqueue(std::move(event), /*coalesce=*/false);
    {
      absl::MutexLock lock(&mu_);
      started_ = true;
    }
    MaybeRead();
  }

  void OnOutput(core::OutputStream stream, absl::string_view data) override {
    v1::AttachEvent event;
    OutputToProto(stream, data, accept_lz4_, event.mutable_output());
    const bool plain = event.output().compression() == v1::COMPRESSION_NONE;
    Enqueue(std::move(event), /*coalesce=*/plain);
  }

  void OnStdinWritten(size_t bytes) override {
    {
      absl::MutexLock lock(&mu_);
      queued_stdin_ -= bytes;
    }
    MaybeRead();
  }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    Log(result);
    grpc::Status status;
    bool report;
    {
      absl::MutexLock lock(&mu_);
      report = result.ok() && error_.ok();
      status = !error_.ok()
                   ? ToGrpcStatus(error_)
                   : (result.ok() ? grpc::Status::OK : ToCallStatus(result.status(), context_));
    }
    if (report) {
      v1::AttachEvent event;
      ResultToProto(*result, event.mutable_exited());
      DurationToProto(absl::Now() - received_,
                      event.mutable_exited()->mutable_timings()->mutable_total());
      Enqueue(std::move(event), /*coalesce=*/false);
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

  // The first message: validate and submit the command, or end the call.
  void Start(bool ok) {
    absl::Status submitted = ok ? Submit()
                                : absl::InvalidArgumentError(
                                      "the call ended before its first message; "
                                      "send AttachRequest.start with the command first");
    if (submitted.ok()) {
      MaybeRead();
      return;
    }
    absl::StatusOr<core::Result> failed = submitted;
    OnFinished(failed);
  }

  absl::Status Submit() {
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
    accept_lz4_ = start.accept_compression() == v1::LZ4;
    core::CommandRequest command_request = CommandRequestFromProto(start);
    request_id_ = command_request.request_id;
    if (!command_request.argv.empty()) argv0_ = command_request.argv[0];
    command_request.streamed = true;
    const int64_t initial_stdin = static_cast<int64_t>(command_request.stdin_data.size());
    const char initial_last_byte =
        command_request.stdin_data.empty() ? '\n' : command_request.stdin_data.back();
    absl::StatusOr<core::Command> command =
        core::ValidateRequest(std::move(command_request), service_.policy());
    if (!command.ok()) return command.status();
    command->stream_output = true;
    command->keep_stdin_open = true;
    command->terminal = terminal_;
    absl::Duration left = TimeUntilDeadline(context_->deadline());
    if (left != absl::InfiniteDuration()) {
      command->deadline = service_.engine().clock().Now() + left;
    }
    writer_.set_chunk_bytes(static_cast<size_t>(command->stream_chunk_bytes));
    {
      absl::MutexLock lock(&mu_);
      queued_stdin_ = initial_stdin;  // Reported through OnStdinWritten like the rest.
      if (initial_stdin > 0) at_line_start_ = initial_last_byte == '\n';
    }
    auto execution = service_.engine().Submit(*std::move(command), this);
    if (!execution.ok()) return execution.status();
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      execution_ = *execution;
      cancelled = cancelled_;
      // Output can outrun this thread: a pause asked for before now is applied now.
      if (output_paused_) service_.engine().SetOutputPaused(execution_, true);
    }
    if (cancelled) service_.engine().Cancel(*execution);
    return absl::OkStatus();
  }

  // A message after the start.
  void Handle(v1::AttachRequest& request) {
    if (request.has_terminal()) {
      Fail(absl::InvalidArgumentError(
          "terminal is for the first message only; send resize to change the size"));
      return;
    }
    std::shared_ptr<core::Engine::Execution> execution;
    bool stdin_closed;
    {
      absl::MutexLock lock(&mu_);
      execution = execution_;
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
        service_.engine().WriteStdin(execution, std::move(*request.mutable_stdin()));
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
        service_.engine().ResizeTerminal(execution, *size);
        return;
      }
      case v1::AttachRequest::kSignal:
        if (absl::Status s = service_.engine().Signal(execution, request.signal()); !s.ok()) {
          Fail(s);
        }
        return;
      case v1::AttachRequest::kStart:
        Fail(absl::InvalidArgumentError(
            absl::StrCat("a second start: this session already runs \"", argv0_,
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
    std::shared_ptr<core::Engine::Execution> execution;
    std::string eof;
    {
      absl::MutexLock lock(&mu_);
      if (stdin_closed_) return;
      stdin_closed_ = true;
      execution = execution_;
      // A terminal is not closed (that would hang up the session): its end-of-file
      // character ends the input, as Ctrl-D does; typed twice after a partial line, whose
      // first one only hands the line to the reader.
      if (terminal_.has_value()) eof = at_line_start_ ? "\x04" : "\x04\x04";
      queued_stdin_ += static_cast<int64_t>(eof.size());
    }
    if (execution == nullptr) return;
    if (terminal_.has_value()) {
      service_.engine().WriteStdin(execution, std::move(eof));
    } else {
      service_.engine().CloseStdin(execution);
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
    std::shared_ptr<core::Engine::Execution> execution;
    {
      absl::MutexLock lock(&mu_);
      if (!error_.ok()) return;
      error_ = std::move(status);
      execution = execution_;
    }
    if (execution != nullptr) service_.engine().Cancel(execution);
  }

  // Starts the next read when the session may take another message.
  void MaybeRead() {
    {
      absl::MutexLock lock(&mu_);
      if (reading_ || client_done_ || !started_ || execution_ == nullptr || !error_.ok() ||
          engine_done_ || queued_stdin_ > kMaxQueuedStdin) {
        return;
      }
      reading_ = true;
    }
    StartRead(&request_);
  }

  // Posted under the lock, so pauses and resumes reach the engine in order; one asked for
  // before the execution is known is applied when it is.
  void SetOutputPaused(bool paused) {
    absl::MutexLock lock(&mu_);
    output_paused_ = paused;
    if (execution_ != nullptr) service_.engine().SetOutputPaused(execution_, paused);
  }

  void Enqueue(v1::AttachEvent event, bool coalesce) { writer_.Push(std::move(event), coalesce); }

  void Log(const absl::StatusOr<core::Result>& result) {
    service_.log().WriteCall(
        "Attach", request_id_, [this] { return context_->peer(); }, argv0_, result, received_);
  }

  ExecutorService& service_;
  grpc::CallbackServerContext* const context_;
  const absl::Time received_;
  // Set while the first message is handled, before the engine can call back.
  std::string request_id_;
  std::string argv0_;
  bool accept_lz4_ = false;
  std::optional<core::TerminalSize> terminal_;  // Set with the start, then read-only.

  v1::AttachRequest request_;  // The message being read (one read at a time).

  absl::Mutex mu_;
  std::shared_ptr<core::Engine::Execution> execution_ ABSL_GUARDED_BY(mu_);
  bool got_start_ ABSL_GUARDED_BY(mu_) = false;    // The first read completed.
  bool started_ ABSL_GUARDED_BY(mu_) = false;      // The engine reported the child running.
  bool reading_ ABSL_GUARDED_BY(mu_) = false;      // A read is in flight.
  bool client_done_ ABSL_GUARDED_BY(mu_) = false;  // The client half-closed.
  bool stdin_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int64_t queued_stdin_ ABSL_GUARDED_BY(mu_) = 0;    // Accepted, not yet written to the child.
  bool at_line_start_ ABSL_GUARDED_BY(mu_) = true;   // The last stdin byte was a newline.
  bool output_paused_ ABSL_GUARDED_BY(mu_) = false;  // What the writer last asked for.
  absl::Status error_ ABSL_GUARDED_BY(mu_);          // A protocol error ends the call with it.
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;    // The command is over.
  EventWriter<v1::AttachEvent> writer_{
      {.start_write = [this](const v1::AttachEvent* event) { StartWrite(event); },
       .finish = [this](const grpc::Status& status) { Finish(status); },
       .pause_output = [this](bool paused) { SetOutputPaused(paused); }},
      /*open=*/true};
};

}  // namespace

grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>* NewAttachCall(
    ExecutorService& service, grpc::CallbackServerContext* context) {
  return new AttachCall(service, context);
}

}  // namespace execd::server
