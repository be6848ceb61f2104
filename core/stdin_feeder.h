// StdinFeeder: writes a command's stdin through its pipe (or terminal) without blocking,
// as the child reads. Data given up front is written and the pipe closed once it is all
// in. An interactive session (Command::keep_stdin_open) keeps the pipe open for more
// (Append) until Close, and reports every byte that leaves execd, written or dropped.
//
// Thread-safety: adopted on the spawning thread; from Watch() on, loop thread only.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "core/event_loop.h"
#include "core/unique_fd.h"

namespace execd::core {

class StdinFeeder final : public EventLoop::FdHandler {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    // A session's `bytes` left execd: written to the child, or dropped because it closed
    // its stdin.
    virtual void OnStdinWritten(size_t bytes) = 0;
  };

  StdinFeeder(EventLoop& loop, Listener* listener) : loop_(loop), listener_(listener) {}
  ~StdinFeeder() override { End(); }
  StdinFeeder(const StdinFeeder&) = delete;
  StdinFeeder& operator=(const StdinFeeder&) = delete;

  // Takes the write end (non-blocking; a terminal's master side), and what to write first.
  // `session`: the pipe stays open for Append once that is written.
  void Adopt(UniqueFd write_end, std::string data, bool session);
  // Before Watch(): what to write first, instead (a pre-warmed process's request).
  void Replace(std::string data) { data_ = std::move(data); }
  bool open() const { return fd_.valid(); }
  bool session() const { return session_; }
  // Before Watch(), for data given up front: writes what the pipe takes now, rather than
  // after a round through epoll, and closes it if that was all (only closes: not watched).
  void WriteNow();
  absl::Status Watch();
  // A session's: queues `data`. Reported written at once when the pipe is gone or closing.
  void Append(std::string data);
  // A session's: the child reads end of file once what is queued is written.
  void Close();
  // Closes the pipe now, whatever is left (the command is over).
  void End();

  void OnFdReady(int fd, uint32_t events) override;

 private:
  // Writes queued data until it is all written or the pipe is full; sets *broken when the
  // child has closed its stdin. Returns the bytes written.
  size_t WriteQueued(bool* broken);
  void Write();
  // Write for a session: the pipe stays open (and unwatched for writing) when it drains.
  void WriteSession(bool reader_gone);

  EventLoop& loop_;
  Listener* const listener_;
  UniqueFd fd_;
  bool watched_ = false;
  std::string data_;
  size_t offset_ = 0;
  bool session_ = false;
  bool closing_ = false;  // A session's Close() was called.
};

}  // namespace execd::core
