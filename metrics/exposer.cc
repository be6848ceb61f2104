#include "metrics/exposer.h"

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

namespace execd::metrics {

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Start(const std::string& address,
                                                         std::shared_ptr<Registry> registry) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
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
  exposer->RegisterCollectable(registry);
  return std::unique_ptr<Exposer>(new Exposer(std::move(exposer), std::move(registry), ports[0]));
}

Exposer::Exposer(std::unique_ptr<prometheus::Exposer> exposer, std::shared_ptr<Registry> registry,
                 int port)
    : exposer_(std::move(exposer)), registry_(std::move(registry)), port_(port) {}

Exposer::~Exposer() {
  exposer_->RemoveCollectable(registry_);
  exposer_.reset();  // Stops serving before the registry can go.
}

}  // namespace execd::metrics
