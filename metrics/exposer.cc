#include "metrics/exposer.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <exception>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "prometheus/exposer.h"

namespace execd::metrics {

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Start(const std::string& address,
                                                        std::shared_ptr<Registry> registry,
                                                        BasicAuth basic_auth) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // One scrape at a time: a caller scraping in a loop costs the server at most one core
    // (a scrape is about 2 ms of CPU), and Prometheus scrapes a target one at a time.
    exposer = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("--metrics_listen=", address, ": cannot listen there (", e.what(),
                     "); is the port taken by another process? Pick another address, or "
                     "--metrics_listen= to serve no metrics"));
  }
  std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--metrics_listen=", address, ": the metrics server listens on no port"));
  }
  // Before the collectable, so that no scrape reads a metric before the check is in place.
  if (basic_auth) exposer->RegisterAuth(std::move(basic_auth), "execd metrics");
  exposer->RegisterCollectable(registry);
  std::string host = address.substr(0, address.rfind(':'));
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  return std::unique_ptr<Exposer>(
      new Exposer(std::move(exposer), std::move(registry), std::move(host), ports[0]));
}

Exposer::Exposer(std::unique_ptr<prometheus::Exposer> exposer, std::shared_ptr<Registry> registry,
                 std::string host, int port)
    : exposer_(std::move(exposer)),
      registry_(std::move(registry)),
      host_(std::move(host)),
      port_(port) {}

namespace {

// Opens and closes a connection to host:port (best effort).
void Knock(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), absl::StrCat(port).c_str(), &hints, &found) != 0) return;
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    (void)connect(fd, found->ai_addr, found->ai_addrlen);
    close(fd);
  }
  freeaddrinfo(found);
}

}  // namespace

Exposer::~Exposer() {
  exposer_->RemoveCollectable(registry_);
  // The embedded web server's listener thread notices it should stop only between polls
  // of its sockets, 2 s apart (CivetWeb's SOCKET_TIMEOUT_QUANTUM), which every shutdown
  // of execd would wait out. A connection ends the poll at once: knock until it has gone.
  absl::Notification stopped;
  std::thread knocker([&] {
    while (!stopped.WaitForNotificationWithTimeout(absl::Milliseconds(5))) Knock(host_, port_);
  });
  exposer_.reset();  // Stops serving before the registry can go.
  stopped.Notify();
  knocker.join();
}

}  // namespace execd::metrics
