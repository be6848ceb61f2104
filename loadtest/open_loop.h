// Open-loop load: request i leaves at start + i / rate on gRPC's callback API, however many
// are still unanswered, so a slow server sees the load a population of independent clients
// would give it rather than one that waits for it; each latency counts from the request's
// scheduled time (no coordinated omission). One thread paces the sends, replies are counted
// on gRPC's threads, and another thread samples the server's concurrency_limit (GetStatus)
// once a second, on a connection of its own so that a backlog of calls cannot delay it.
#pragma once

#include <string>

#include "absl/time/time.h"
#include "loadtest/loadtest.h"

namespace execd::loadtest {

// Runs `config` (open_loop, rate > 0, mode kExecute or kPing) over `channels`: the requests
// of `config.requests`, or of `config.duration` at the rate, then waits up to
// `config.drain_timeout` for the replies still due and cancels the rest.
Report RunOpenLoop(const Config& config, ChannelPool& channels);

// `report.timeline` as CSV: the header `t_s,sent,ok,errors,p50_ms,p99_ms,limit,completed`,
// then one row per second, t_s counted from the run's start plus `offset` (so that runs
// against one server can be concatenated). Fields without a figure (no success, no limit
// sample) are empty.
std::string FormatTimelineCsv(const Report& report, absl::Duration offset);

// `report.requests_log` as CSV: the header `scheduled_s,latency_ms,ok`, then one row per
// request in the order scheduled, scheduled_s plus `offset`; ok is 1 or 0.
std::string FormatRequestLogCsv(const Report& report, absl::Duration offset);

}  // namespace execd::loadtest
