#include "core/stdin_feeder.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace execd::core {

void StdinFeeder::Adopt(UniqueFd write_end, std::string data, bool session) {
  fd_ = std::move(write_end);
  data_ = std::move(data);
  session_ = session && fd_.valid();
}

void StdinFeeder::WriteNow() {
  if (fd_.valid() && !session_) Write();
}

absl::Status StdinFeeder::Watch() {
  EXECD_DCHECK_LOOP(loop_);
  watched_ = true;
  if (!fd_.valid()) return absl::OkStatus();
  return loop_.Watch(fd_.get(), EPOLLOUT, this);
}

void StdinFeeder::OnFdReady(int /*fd*/, uint32_t events) {
  EXECD_DCHECK_LOOP(loop_);
  if (session_) {
    WriteSession(/*reader_gone=*/(events & (EPOLLERR | EPOLLHUP)) != 0);
  } else {
    Write();
  }
}

size_t StdinFeeder::WriteQueued(bool* broken) {
  size_t written = 0;
  while (offset_ < data_.size()) {
    ssize_t n = write(fd_.get(), data_.data() + offset_, data_.size() - offset_);
    if (n > 0) {
      offset_ += static_cast<size_t>(n);
      written += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    *broken = true;  // EPIPE: the child closed its stdin.
    break;
  }
  return written;
}

void StdinFeeder::Write() {
  bool broken = false;
  WriteQueued(&broken);
  if (!broken && offset_ < data_.size()) return;  // The pipe is full: later.
  // All written, or the child closed its stdin and the rest is not wanted.
  End();
  std::string().swap(data_);
}

void StdinFeeder::WriteSession(bool reader_gone) {
  // The child closed its stdin: reported even while nothing waits to be written (epoll
  // reports it regardless of the events asked for), so our end must close now. The
  // session goes on without it.
  bool broken = reader_gone;
  size_t written = broken ? 0 : WriteQueued(&broken);
  if (broken || offset_ == data_.size()) {
    written += data_.size() - offset_;  // Dropped, when broken.
    std::string().swap(data_);
    offset_ = 0;
    if (broken || closing_) {
      End();
    } else {
      (void)loop_.Modify(fd_.get(), 0);  // Nothing to write until Append.
    }
  }
  if (written > 0) listener_->OnStdinWritten(written);
}

void StdinFeeder::Append(std::string data) {
  EXECD_DCHECK_LOOP(loop_);
  if (!session_ || !fd_.valid() || closing_) {
    listener_->OnStdinWritten(data.size());  // Nobody reads it any more.
    return;
  }
  const bool idle = offset_ == data_.size();
  data_.erase(0, offset_);
  offset_ = 0;
  data_.append(data);
  if (idle) (void)loop_.Modify(fd_.get(), EPOLLOUT);
}

void StdinFeeder::Close() {
  EXECD_DCHECK_LOOP(loop_);
  if (!session_ || closing_) return;
  closing_ = true;
  if (offset_ == data_.size()) End();
}

void StdinFeeder::End() {
  if (!fd_.valid()) return;
  if (watched_) loop_.Unwatch(fd_.get());  // Never touch the loop from a spawning thread.
  fd_.reset();
}

}  // namespace execd::core
