// OutputCollector: reads a command's stdout and stderr without blocking, keeps each within
// the command's output cap, and captures them for the result or, streamed, hands them on
// in batches: a batch goes once it reaches the chunk size or its first byte is the flush
// interval old. Paused (its reader is behind), it reads nothing, so the child blocks on its
// full pipe rather than execd buffer without bound. The command's exit waits for the last
// batch to be handed on (HoldExit), so the output always comes before the exit.
//
// Thread-safety: adopted on the spawning thread; from Watch() on, loop thread only.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/command.h"
#include "core/event_loop.h"
#include "core/unique_fd.h"

namespace execd::core {

class OutputCollector final : public EventLoop::FdHandler {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    // Streamed output; `data` is valid for the call only. The listener may pause the
    // collector from inside it.
    virtual void OnOutput(OutputStream stream, absl::string_view data) = 0;
    // Output went past the cap (it is truncated there).
    virtual void OnOutputCapped() = 0;
    // Output was read, or an output ended.
    virtual void OnOutputRead() = 0;
    // The exit HoldExit held back may go: everything was handed on (or DropHeld).
    virtual void OnExitReleased() = 0;
  };
  struct Settings {
    int64_t max_bytes = 0;  // Per stream.
    bool stream = false;    // Hand on in batches rather than capture.
    int64_t chunk_bytes = 64 << 10;
    absl::Duration flush_interval = absl::Milliseconds(10);
  };

  OutputCollector(EventLoop& loop, Listener* listener) : loop_(loop), listener_(listener) {}
  ~OutputCollector() override;
  OutputCollector(const OutputCollector&) = delete;
  OutputCollector& operator=(const OutputCollector&) = delete;

  // Before Watch(): the caps and batching of the command it runs for.
  void Configure(const Settings& settings);
  // Takes the read ends (stderr's is invalid on a terminal, where all output is stdout).
  void Adopt(UniqueFd stdout_read, UniqueFd stderr_read);
  absl::Status Watch();
  // Stops (or resumes) reading; batched output goes on from the loop once resumed.
  void SetPaused(bool paused);
  // Both outputs have ended.
  bool ended() const { return !fds_[0].valid() && !fds_[1].valid(); }
  // The stdout read end (a terminal's master side), or -1 once it ended.
  int stdout_fd() const { return fds_[0].get(); }
  bool truncated() const { return truncated_[0] || truncated_[1]; }

  // No one writes any more (the command's processes are gone, or both pipes ended): reads
  // what is left, bounded, and closes both.
  void Drain();
  // The command is over: OnExitReleased once the batches are all handed on, maybe at once.
  void HoldExit();
  bool exit_held() const { return exit_held_; }
  // Nobody will read the rest in time: the batches are dropped (truncated), and the exit
  // goes.
  void DropHeld();
  // The captured output and what was truncated, into `result`.
  void MoveInto(Result& result);

  void OnFdReady(int fd, uint32_t events) override;

 private:
  // Bounded per wake-up, so one chatty child cannot starve the loop; a drain takes what is
  // buffered, bounded too in case an escaped process keeps writing.
  void Read(int index, bool drain);
  void Deliver(int index, const char* data, size_t size);
  // Hands on batches_[index] in chunks while not paused, the last one short too if
  // `partial`.
  void HandOn(int index, bool partial);
  void ArmFlush(absl::Duration after);
  // Hands on all it can; then, if the exit waits for that, releases it.
  void Flush();
  void Close(int index);

  EventLoop& loop_;
  Listener* const listener_;
  Settings settings_;
  std::array<UniqueFd, 2> fds_;  // stdout, stderr read ends.
  bool watched_ = false;
  bool paused_ = false;
  std::array<int64_t, 2> captured_{0, 0};
  std::array<std::string, 2> data_;     // Captured (not streamed) output.
  std::array<std::string, 2> batches_;  // Streamed output not yet handed on.
  std::array<bool, 2> truncated_{false, false};
  EventLoop::TimerId flush_timer_ = 0;
  bool exit_held_ = false;
};

}  // namespace execd::core
