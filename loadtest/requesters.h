// What one request of each kind is: an Execute or Ping RPC over a pool of channels, or the
// command spawned locally (with or without a session of its own). A Requester belongs to one
// load worker thread; an AsyncRequester and a ChannelPool are shared by all callers and are
// thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "execd/v1/execd.grpc.pb.h"
#include "loadtest/loadtest.h"

namespace execd::loadtest {

// A client connection pool: `size` channels to one target, each its own connection (gRPC
// would otherwise share one subchannel among channels with equal arguments), handed out
// round-robin, one per request.
class ChannelPool {
 public:
  ChannelPool(const std::string& target, int size, const client::ClientAuth& auth = {});
  v1::Executor::Stub& Next();
  int size() const { return static_cast<int>(stubs_.size()); }

 private:
  std::vector<std::unique_ptr<v1::Executor::Stub>> stubs_;
  std::atomic<uint64_t> next_{0};
};

// Sends one request; returns an error text, empty on success.
class Requester {
 public:
  virtual ~Requester() = default;
  virtual std::string Send() = 0;
  // The server's time for the request just sent, where the server reports one.
  virtual std::optional<absl::Duration> ServerTime() const { return std::nullopt; }
};

// One requester of `config.mode` (not kBatch); `channels` must outlive it.
std::unique_ptr<Requester> MakeRequester(const Config& config, ChannelPool& channels);

// How one request ended: an error text (empty on success) and, where the server reports
// one, its own time for the request.
struct Outcome {
  std::string error;
  std::optional<absl::Duration> server_time;
};

// Starts requests on gRPC's callback API without waiting for them.
class AsyncRequester {
 public:
  virtual ~AsyncRequester() = default;
  // Sends one request under `context`, which must outlive the call; `done` runs once, on a
  // gRPC thread, when the call ends (cancelling `context` ends it at once).
  virtual void Start(grpc::ClientContext* context, std::function<void(Outcome)> done) = 0;
};

// An async requester of `config.mode`: kExecute or kPing, else nullptr. `channels` must
// outlive it and every call it started.
std::unique_ptr<AsyncRequester> MakeAsyncRequester(const Config& config, ChannelPool& channels);

}  // namespace execd::loadtest
