// EventQueue: the events of one streaming call waiting to be written (gRPC allows one
// write at a time), with the output bytes they hold counted for back-pressure. Shared by
// ExecuteStream and Attach, whose event messages have the same `output` field, and by
// ExecuteBatch, whose results hold their items' whole output (counted, never merged).
//
// Not thread-safe: the reactor's lock guards it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <deque>
#include <functional>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/compress.h"
#include "core/dispatcher.h"
#include "execd/v1/execd.pb.h"

namespace execd::server {

// Events that carry a child's output (ExecuteEvent, AttachEvent).
template <typename Event>
concept CarriesOutput = requires(const Event& e) {
  e.has_output();
  e.output().data();
};

// What one queued message costs beyond its output bytes: the message, its output
// submessage and their allocations (measured at about 165 bytes on x86-64 with gRPC 1.51),
// so that a reader asking for 1-byte chunks is paused at the same memory as any other.
inline constexpr size_t kMessageCost = 192;

// Memory an event holds: its own cost, and an output chunk's bytes or a batch result's
// whole output.
template <typename Event>
size_t HeldBytes(const Event& e) {
  if constexpr (CarriesOutput<Event>) {
    return kMessageCost + (e.has_output() ? e.output().data().size() : 0);
  } else if constexpr (requires { e.response().stdout(); }) {
    return kMessageCost + e.response().stdout().size() + e.response().stderr().size();
  } else {
    return kMessageCost;
  }
}

template <typename Event>
class EventQueue {
 public:
  // Output queued for a slow reader: above kPauseBytes the child's output should no longer
  // be read (it blocks on its pipe); at kResumeBytes reading resumes.
  static constexpr size_t kPauseBytes = core::kStreamWindowBytes;
  static constexpr size_t kResumeBytes = kPauseBytes / 4;

  // Messages are never merged past `chunk_bytes` (the size the caller asked for).
  void set_chunk_bytes(size_t chunk_bytes) { chunk_bytes_ = chunk_bytes; }

  // Adds `event`. Output of the same stream as the last queued event is merged into it
  // (while a write is in flight, many small writes of a chatty child become one message);
  // queued output is always plain, as EventWriter compresses only as it writes. Returns
  // true when the caller should now pause the child's output.
  bool Push(Event event) {
    bool merge = false;
    if constexpr (CarriesOutput<Event>) {
      merge = event.has_output() && !queue_.empty() && queue_.back().has_output() &&
              queue_.back().output().stream() == event.output().stream() &&
              queue_.back().output().data().size() + event.output().data().size() <= chunk_bytes_;
      if (merge) {  // No message of its own: only its bytes count.
        bytes_ += event.output().data().size();
        queue_.back().mutable_output()->mutable_data()->append(event.output().data());
      }
    }
    if (!merge) {
      bytes_ += HeldBytes(event);
      queue_.push_back(std::move(event));
    }
    if (paused_ || bytes_ <= kPauseBytes) return false;
    paused_ = true;
    return true;
  }

  // Moves the next event into `*out`; false when there is none.
  bool Pop(Event* out) {
    if (queue_.empty()) return false;
    *out = std::move(queue_.front());
    queue_.pop_front();
    bytes_ -= HeldBytes(*out);
    return true;
  }

  // After a write: true once when a paused child's output should be read again.
  bool TakeResume() {
    if (!paused_ || bytes_ > kResumeBytes) return false;
    paused_ = false;
    return true;
  }

  // The reader is gone: drops everything (and lets a paused child resume).
  void Clear() {
    queue_.clear();
    bytes_ = 0;
  }

  bool empty() const { return queue_.empty(); }

 private:
  std::deque<Event> queue_;
  size_t bytes_ = 0;  // HeldBytes of queue_.
  size_t chunk_bytes_ = 64 << 10;
  bool paused_ = false;
};

// The write side of a streaming call, shared by ExecuteStream, Attach and ExecuteBatch:
// events queue while a write is in flight (gRPC allows one at a time; writes are never
// issued under the lock), the child's output is paused while too much waits, and the call
// finishes once the command (or batch) is over and everything queued has been written (or
// the reader is gone). Output is queued plain (so chunks merge) and, for a caller that
// accepts lz4, compressed as it is written when the stream's core::StreamCompressor says
// it pays: on the thread that starts the write, never under the lock. Thread-safe.
template <typename Event>
class EventWriter {
 public:
  struct Hooks {
    std::function<void(const Event*)> start_write;    // The reactor's StartWrite.
    std::function<void(const grpc::Status&)> finish;  // The reactor's Finish.
    // Stop (or resume) reading the child. Called under the writer's lock, so that a pause
    // and the resume after it are passed on in the order they were decided (outside it, a
    // resume could overtake its pause and leave the child paused for good); it must not
    // call back into the writer.
    std::function<void(bool)> pause_output;
    // Optional: an event has been written (the message has left the server). Called outside
    // the writer's lock, before the next write starts; it must not call back into the writer.
    std::function<void(const Event&)> written = nullptr;
  };
  EventWriter(Hooks hooks, bool open) : hooks_(std::move(hooks)), open_(open) {}

  void set_chunk_bytes(size_t chunk_bytes) {
    absl::MutexLock lock(&mu_);
    queue_.set_chunk_bytes(chunk_bytes);
  }
  // Before Open: the caller reads lz4 frames.
  void set_accept_lz4(bool accept) { accept_lz4_ = accept; }
  // Before Open: where the output's bytes are counted, before and after compression.
  void set_metrics(core::Metrics* metrics) { metrics_ = metrics; }
  // Writing may begin (a reactor may queue events before it is ready to write).
  void Open() {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      open_ = true;
      action = NextLocked();
    }
    Take(action);
  }
  void Push(Event event) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      if (broken_) return;
      if (queue_.Push(std::move(event))) hooks_.pause_output(true);
      action = NextLocked();
    }
    Take(action);
  }
  // The reactor's OnWriteDone.
  void WriteDone(bool ok) {
    if (ok) Measure();
    if (ok && hooks_.written) hooks_.written(current_);
    Action action;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        broken_ = true;  // The client is gone; finish once the command is over.
        queue_.Clear();
      }
      if (queue_.TakeResume()) hooks_.pause_output(false);
      action = NextLocked();
    }
    Take(action);
  }
  // The command is over: the call ends with `status` after what is queued. Called on an
  // engine thread, outside the reactor's reactions: once closed_ is set, another thread
  // may finish the call and gRPC delete the reactor. So what to do next is decided in the
  // same critical section; after it, this thread only issues the write or the finish it
  // decided on, and the call cannot end before either.
  void Close(grpc::Status status) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      final_status_ = std::move(status);
      closed_ = true;
      action = NextLocked();
    }
    Take(action);
  }

 private:
  enum class Action { kNothing, kWrite, kFinish };

  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!open_ || writing_ || finished_) return Action::kNothing;
    if (queue_.Pop(&current_)) {
      writing_ = true;
      return Action::kWrite;
    }
    if (!closed_) return Action::kNothing;
    finished_ = true;
    return Action::kFinish;
  }
  // Outside the lock: writes are never issued under it. current_ and final_status_ are not
  // touched again until this write is done or the call finished.
  void Take(Action action) {
    if (action == Action::kWrite) {
      Compress();
      hooks_.start_write(&current_);
    }
    if (action == Action::kFinish) hooks_.finish(final_status_);
  }

  // The write of current_ is about to start: compress its output if that pays.
  void Compress() {
    if constexpr (CarriesOutput<Event>) {
      if (!current_.has_output()) return;
      auto* output = current_.mutable_output();
      const core::OutputStream stream = output->stream() == v1::ExecuteEvent::STDERR
                                            ? core::OutputStream::kStderr
                                            : core::OutputStream::kStdout;
      const auto size = [](const std::string& s) { return static_cast<int64_t>(s.size()); };
      metrics_->Output(stream, core::OutputEncoding::kRaw, size(output->data()));
      if (accept_lz4_) {
        std::string frame;
        if (compressor_.Compress(output->data(), &frame)) {
          *output->mutable_data() = std::move(frame);
          output->set_compression(v1::LZ4);
        }
        write_started_ = core::MonotonicClock::Get().Now();
      }
      metrics_->Output(stream,
                       output->compression() == v1::LZ4 ? core::OutputEncoding::kLz4
                                                        : core::OutputEncoding::kIdentity,
                       size(output->data()));
    }
  }
  // current_ was written: a plain one tells the compressor how fast the wire drains.
  void Measure() {
    if constexpr (CarriesOutput<Event>) {
      if (!accept_lz4_ || !current_.has_output() ||
          current_.output().compression() != v1::COMPRESSION_NONE) {
        return;
      }
      compressor_.Written(current_.output().data().size(),
                          core::MonotonicClock::Get().Now() - write_started_);
    }
  }

  const Hooks hooks_;
  absl::Mutex mu_;
  EventQueue<Event> queue_ ABSL_GUARDED_BY(mu_);
  Event current_;  // The message being written.
  // Used only by the thread writing current_, like current_.
  bool accept_lz4_ = false;
  core::Metrics* metrics_ = &core::Metrics::Null();
  core::StreamCompressor compressor_;
  absl::Time write_started_;
  bool open_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_;
};

}  // namespace execd::server
