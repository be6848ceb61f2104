// EventQueue: the events of one streaming call waiting to be written (gRPC allows one
// write at a time), with the output bytes they hold counted for back-pressure. Shared by
// ExecuteStream and Attach, whose event messages have the same `output` field.
//
// Not thread-safe: the reactor's lock guards it.
#pragma once

#include <cstddef>
#include <deque>
#include <utility>

#include "execd/v1/execd.pb.h"

namespace execd::server {

template <typename Event>
class EventQueue {
 public:
  // Output queued for a slow reader: above kPauseBytes the child's output should no longer
  // be read (it blocks on its pipe); at kResumeBytes reading resumes.
  static constexpr size_t kPauseBytes = 1 << 20;
  static constexpr size_t kResumeBytes = 256 << 10;

  // Messages are never merged past `chunk_bytes` (the size the caller asked for).
  void set_chunk_bytes(size_t chunk_bytes) { chunk_bytes_ = chunk_bytes; }

  // Adds `event`. With `coalesce`, uncompressed output of the same stream as the last
  // queued event is merged into it (while a write is in flight, many small writes of a
  // chatty child become one message). Returns true when the caller should now pause the
  // child's output.
  bool Push(Event event, bool coalesce) {
    if (event.has_output()) bytes_ += event.output().data().size();
    if (coalesce && !queue_.empty() && queue_.back().has_output() &&
        queue_.back().output().stream() == event.output().stream() &&
        queue_.back().output().compression() == v1::COMPRESSION_NONE &&
        queue_.back().output().data().size() + event.output().data().size() <= chunk_bytes_) {
      queue_.back().mutable_output()->mutable_data()->append(event.output().data());
    } else {
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
    if (out->has_output()) bytes_ -= out->output().data().size();
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
  size_t bytes_ = 0;  // Output bytes in queue_.
  size_t chunk_bytes_ = 64 << 10;
  bool paused_ = false;
};

}  // namespace execd::server
