// Exposer: serves a Registry at http://<address>/metrics on a listener of its own (a thread
// of prometheus-cpp's embedded web server, one scrape at a time), apart from the gRPC port.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "metrics/registry.h"

namespace prometheus {
class Exposer;
}

namespace execd::metrics {

class Exposer {
 public:
  // Whether a user and password of HTTP basic auth may scrape; called on the web server's
  // thread for each scrape.
  using BasicAuth = std::function<bool(const std::string& user, const std::string& password)>;

  // Listens on `address` ("host:port"; port 0 picks a free one). FAILED_PRECONDITION naming
  // the address when it cannot (taken, or not an address of this machine). With
  // `basic_auth`, a scrape without a user and password it accepts gets 401.
  static absl::StatusOr<std::unique_ptr<Exposer>> Start(const std::string& address,
                                                        std::shared_ptr<Registry> registry,
                                                        BasicAuth basic_auth = nullptr);
  ~Exposer();

  // The port it listens on.
  int port() const { return port_; }

 private:
  Exposer(std::unique_ptr<prometheus::Exposer> exposer, std::shared_ptr<Registry> registry,
          std::string host, int port);
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<Registry> registry_;
  std::string host_;  // Where a client reaches the listener (a wildcard made loopback).
  int port_;
};

}  // namespace execd::metrics
