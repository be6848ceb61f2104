#include "server/request_log.h"

#include <pthread.h>

#include <cstdio>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace execd::server {
namespace {

std::string Quoted(absl::string_view s) { return absl::StrCat("\"", absl::CHexEscape(s), "\""); }

std::string Ms(absl::Duration d) { return absl::StrFormat("%.3f", absl::ToDoubleMilliseconds(d)); }

std::string Timestamp(absl::Time now) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", now, absl::UTCTimeZone());
}

}  // namespace

std::string RequestLog::Format(const Entry& e, absl::Time now) {
  std::string line =
      absl::StrCat("ts=", Timestamp(now), " rpc=", e.rpc, " request_id=", Quoted(e.request_id),
                   " peer=", e.peer, " identity=", Quoted(e.identity), " argv0=", Quoted(e.argv0));
  if (e.result != nullptr && e.result->ok()) {
    const core::Result& r = **e.result;
    absl::StrAppend(&line, " status=OK termination=", core::TerminationName(r.termination),
                    " exit=", r.status.code, " signal=", r.status.signal, " pid=", r.pid,
                    " queued_ms=", Ms(r.queued), " spawn_ms=", Ms(r.spawn), " run_ms=", Ms(r.run),
                    " total_ms=", Ms(e.total), " stdout_bytes=", r.stdout_data.size(),
                    " stderr_bytes=", r.stderr_data.size());
  } else {
    absl::Status status =
        e.result == nullptr ? absl::UnknownError("no result") : e.result->status();
    absl::StrAppend(&line, " status=", absl::StatusCodeToString(status.code()),
                    " total_ms=", Ms(e.total), " error=", Quoted(status.message()));
  }
  return line;
}

RequestLog::RequestLog(bool enabled) : enabled_(enabled) {
  writer_ = std::thread([this] { Run(); });
}

RequestLog::~RequestLog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  writer_.join();
}

void RequestLog::WriteCall(absl::string_view rpc, absl::string_view request_id,
                           const std::function<std::string()>& peer, absl::string_view identity,
                           absl::string_view argv0, const absl::StatusOr<core::Result>& result,
                           absl::Duration total) {
  if (!enabled_) return;
  const std::string peer_name = peer();
  Entry entry;
  entry.rpc = rpc;
  entry.request_id = request_id;
  entry.peer = peer_name;
  entry.identity = identity;
  entry.argv0 = argv0;
  entry.result = &result;
  entry.total = total;
  Write(entry);
}

void RequestLog::Write(const Entry& entry) {
  if (!enabled_) return;
  std::string line = Format(entry, absl::Now());
  line.push_back('\n');
  Append(std::move(line));
}

void RequestLog::Append(std::string line) {
  absl::MutexLock lock(&mu_);
  if (buffer_.size() + line.size() > kMaxBufferedBytes) {
    ++dropped_;
    return;
  }
  if (dropped_ > 0) {
    absl::StrAppend(&buffer_, "ts=", Timestamp(absl::Now()),
                    " event=log_lines_dropped lines=", dropped_,
                    " reason=\"stderr is not read fast enough\"\n");
    dropped_ = 0;
    ++appended_;
  }
  buffer_.append(line);
  ++appended_;
}

void RequestLog::Event(absl::string_view fields) {
  Append(absl::StrCat("ts=", Timestamp(absl::Now()), " ", fields, "\n"));
  absl::MutexLock lock(&mu_);
  const int64_t mine = appended_;
  auto written = [this, mine]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return written_ >= mine; };
  mu_.Await(absl::Condition(&written));
}

void RequestLog::Run() {
  pthread_setname_np(pthread_self(), "execd-log");
  for (;;) {
    std::string lines;
    int64_t count;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !buffer_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (buffer_.empty()) return;  // Stopping, and everything is written.
      lines.swap(buffer_);
      count = appended_;
    }
    fwrite(lines.data(), 1, lines.size(), stderr);
    fflush(stderr);
    absl::MutexLock lock(&mu_);
    written_ = count;
  }
}

}  // namespace execd::server
