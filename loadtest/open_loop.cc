#include "loadtest/open_loop.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "execd/v1/execd.grpc.pb.h"
#include "loadtest/requesters.h"

namespace execd::loadtest {
namespace {

// The whole seconds from `start` to `t`.
size_t SecondOf(absl::Time start, absl::Time t) {
  return t <= start ? 0 : static_cast<size_t>(absl::ToInt64Seconds(t - start));
}

class OpenLoop {
 public:
  OpenLoop(const Config& config, ChannelPool& channels)
      : config_(config),
        requester_(MakeAsyncRequester(config, channels)),
        status_channel_(config.target, 1, config.auth) {}

  Report Run() {
    const int64_t total =
        config_.requests > 0
            ? config_.requests
            : static_cast<int64_t>(absl::ToDoubleSeconds(config_.duration) * config_.rate);
    {
      absl::MutexLock lock(&mu_);
      records_.resize(static_cast<size_t>(total));
    }
    start_ = absl::Now();
    absl::Notification stop_sampling;
    std::thread sampler([&] { SampleLimits(stop_sampling); });
    absl::Time last_scheduled = start_;
    for (int64_t i = 0; i < total; ++i) {
      last_scheduled = start_ + absl::Seconds(static_cast<double>(i) / config_.rate);
      const absl::Duration wait = last_scheduled - absl::Now();
      if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
      Send(static_cast<size_t>(i), last_scheduled);
    }
    Drain(std::max(last_scheduled, absl::Now()) + config_.drain_timeout);
    const absl::Time end = absl::Now();
    stop_sampling.Notify();
    sampler.join();
    return MakeReport(end);
  }

 private:
  struct Call {
    grpc::ClientContext context;
    size_t index = 0;
    absl::Time scheduled;
    size_t second = 0;
    bool cancelled = false;  // By Drain, at the end of the run.
  };
  struct Second {
    int64_t sent = 0;
    int64_t ok = 0;
    int64_t errors = 0;
    int64_t completed = 0;
    std::vector<absl::Duration> latencies;
    std::optional<int> limit;
  };

  // A deque keeps references to the earlier seconds valid as later ones are added.
  Second& At(size_t second) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (second >= seconds_.size()) seconds_.resize(second + 1);
    return seconds_[second];
  }

  void Fail(Second& second, const std::string& error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++second.errors;
    ++errors_;
    if (first_error_.empty()) first_error_ = error;
  }

  void Send(size_t index, absl::Time scheduled) {
    max_send_lag_ = std::max(max_send_lag_, absl::Now() - scheduled);
    auto call = std::make_unique<Call>();
    call->index = index;
    call->scheduled = scheduled;
    call->second = SecondOf(start_, scheduled);
    {
      absl::MutexLock lock(&mu_);
      Second& second = At(call->second);
      records_[index].scheduled = scheduled - start_;
      if (static_cast<int64_t>(outstanding_.size()) >= config_.max_outstanding) {
        Fail(second, absl::StrFormat("not sent at its time: %d requests were unanswered "
                                     "(--max_outstanding=%d)",
                                     outstanding_.size(), config_.max_outstanding));
        return;
      }
      ++second.sent;
      outstanding_.insert(call.get());
      peak_outstanding_ = std::max(peak_outstanding_, static_cast<int64_t>(outstanding_.size()));
    }
    // Started without the lock: gRPC may run the callback, which takes it, on this thread.
    Call* started = call.release();
    requester_->Start(&started->context,
                      [this, started](Outcome outcome) { OnDone(started, std::move(outcome)); });
  }

  void OnDone(Call* call, Outcome outcome) {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    outstanding_.erase(call);
    Second& second = At(call->second);
    RequestRecord& record = records_[call->index];
    record.latency = now - call->scheduled;
    record.ok = !call->cancelled && outcome.error.empty();
    if (call->cancelled) {
      Fail(second, absl::StrFormat("unanswered %s after the last send; cancelled "
                                   "(--drain_timeout)",
                                   absl::FormatDuration(config_.drain_timeout)));
    } else if (!outcome.error.empty()) {
      Fail(second, outcome.error);
    } else {
      ++second.ok;
      second.latencies.push_back(now - call->scheduled);
      latencies_.push_back(now - call->scheduled);
      if (outcome.server_time) server_times_.push_back(*outcome.server_time);
      ++At(SecondOf(start_, now)).completed;
    }
    // While Drain cancels, it may still hold pointers to calls that end meanwhile.
    if (cancelling_) {
      ended_while_cancelling_.emplace_back(call);
    } else {
      delete call;
    }
  }

  bool NoneOutstanding() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return outstanding_.empty(); }

  // Waits for every reply until `deadline`, then cancels the calls still unanswered and
  // waits for them to end.
  void Drain(absl::Time deadline) {
    std::vector<Call*> to_cancel;
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithDeadline(absl::Condition(this, &OpenLoop::NoneOutstanding), deadline)) {
        return;
      }
      cancelling_ = true;
      for (Call* call : outstanding_) {
        call->cancelled = true;
        to_cancel.push_back(call);
      }
    }
    // Without the lock: TryCancel may run the call's callback on this thread.
    for (Call* call : to_cancel) call->context.TryCancel();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &OpenLoop::NoneOutstanding));
    cancelling_ = false;
    ended_while_cancelling_.clear();
  }

  // Samples at each whole second from the start until `stop`; a sample that takes longer
  // than a second skips the seconds it overran rather than catching up with a burst.
  void SampleLimits(absl::Notification& stop) {
    v1::Executor::Stub& stub = status_channel_.Next();
    for (absl::Time next = start_;;) {
      if (stop.WaitForNotificationWithTimeout(next - absl::Now())) return;
      const absl::Time asked = absl::Now();
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(asked + absl::Seconds(1)));
      v1::StatusResponse status;
      if (stub.GetStatus(&context, v1::StatusRequest(), &status).ok()) {
        absl::MutexLock lock(&mu_);
        At(SecondOf(start_, asked)).limit = status.concurrency_limit();
      }
      next = start_ + absl::Seconds(SecondOf(start_, absl::Now()) + 1);
    }
  }

  Report MakeReport(absl::Time end) {
    absl::MutexLock lock(&mu_);
    Report report;
    report.mode = config_.mode;
    report.open_loop = true;
    report.rate = config_.rate;
    report.elapsed = end - start_;
    report.errors = errors_;
    report.first_error = first_error_;
    report.peak_outstanding = peak_outstanding_;
    report.max_send_lag = max_send_lag_;
    report.requests_log = std::move(records_);
    Summarize(std::move(latencies_), &report);
    std::sort(server_times_.begin(), server_times_.end());
    report.server_p50 = Percentile(server_times_, 0.50);
    report.server_samples = static_cast<int64_t>(server_times_.size());
    for (Second& second : seconds_) {
      std::sort(second.latencies.begin(), second.latencies.end());
      report.timeline.push_back(TimelineSecond{.sent = second.sent,
                                               .ok = second.ok,
                                               .errors = second.errors,
                                               .p50 = Percentile(second.latencies, 0.50),
                                               .p99 = Percentile(second.latencies, 0.99),
                                               .completed = second.completed,
                                               .limit = second.limit});
    }
    return report;
  }

  const Config& config_;
  const std::unique_ptr<AsyncRequester> requester_;
  ChannelPool status_channel_;
  absl::Time start_;
  absl::Duration max_send_lag_;  // The sending thread's own.

  absl::Mutex mu_;
  std::deque<Second> seconds_ ABSL_GUARDED_BY(mu_);
  std::vector<RequestRecord> records_ ABSL_GUARDED_BY(mu_);  // One per request, by index.
  std::unordered_set<Call*> outstanding_ ABSL_GUARDED_BY(mu_);
  bool cancelling_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<Call>> ended_while_cancelling_ ABSL_GUARDED_BY(mu_);
  int64_t peak_outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t errors_ ABSL_GUARDED_BY(mu_) = 0;
  std::string first_error_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> latencies_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> server_times_ ABSL_GUARDED_BY(mu_);
};

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

Report RunOpenLoop(const Config& config, ChannelPool& channels) {
  return OpenLoop(config, channels).Run();
}

std::string FormatTimelineCsv(const Report& report, absl::Duration offset) {
  std::string out = "t_s,sent,ok,errors,p50_ms,p99_ms,limit,completed\n";
  for (size_t i = 0; i < report.timeline.size(); ++i) {
    const TimelineSecond& s = report.timeline[i];
    absl::StrAppend(&out, absl::StrFormat("%.10g,%d,%d,%d,", absl::ToDoubleSeconds(offset) + i,
                                          s.sent, s.ok, s.errors));
    if (s.ok > 0) {
      absl::StrAppend(&out, absl::StrFormat("%.3f,%.3f,", Ms(s.p50), Ms(s.p99)));
    } else {
      absl::StrAppend(&out, ",,");
    }
    if (s.limit) absl::StrAppend(&out, *s.limit);
    absl::StrAppend(&out, ",", s.completed, "\n");
  }
  return out;
}

std::string FormatRequestLogCsv(const Report& report, absl::Duration offset) {
  std::string out = "scheduled_s,latency_ms,ok\n";
  for (const RequestRecord& r : report.requests_log) {
    absl::StrAppend(&out,
                    absl::StrFormat("%.6f,%.3f,%d\n", absl::ToDoubleSeconds(offset + r.scheduled),
                                    Ms(r.latency), r.ok ? 1 : 0));
  }
  return out;
}

}  // namespace execd::loadtest
