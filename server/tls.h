// ServerTls: the main listener's TLS, which new certificates replace without a restart.
//
// gRPC 1.51 takes no new certificates from a running program; it re-reads files
// (FileWatcherCertificateProvider, every kRefresh). So gRPC is given private in-memory
// files (memfds, close-on-exec: no command inherits them) rather than the operator's, and
// only material that OpenSSL has checked goes into them: a key that does not match its
// certificate, an expired certificate or half-written file, which would make gRPC refuse
// every handshake, never gets there. The key and its certificate chain share one file,
// replaced in one step and stamped with a modification time of its own, so gRPC, which
// checks that times did not change while it read, never pairs a key with another
// certificate.
//
// A replacement applies to connections made after gRPC's next read; open connections keep
// the certificates they were made with.
//
// Thread-safety: Install from one thread at a time; the rest is immutable.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc::experimental {
class CertificateProviderInterface;
}

namespace execd::server {

class ServerTls {
 public:
  // How often gRPC looks for new material.
  static constexpr absl::Duration kRefresh = absl::Seconds(1);

  struct Paths {
    std::string cert;       // --tls_cert
    std::string key;        // --tls_key
    std::string client_ca;  // --tls_client_ca; empty: no client certificates asked for.
  };
  // Checked PEM, ready for gRPC.
  struct Material {
    std::string identity;   // The private key, then the certificate chain.
    std::string client_ca;  // Empty without mutual TLS.
    std::string summary;    // For the log: the certificate's subject and expiry.
  };

  // Reads and checks the files: the chain parses and its first certificate is valid now,
  // the key is an unencrypted PEM key matching it, the CA file holds certificates. Errors
  // name the flag and the file.
  static absl::StatusOr<Material> Read(const Paths& paths);

  static absl::StatusOr<std::unique_ptr<ServerTls>> Create(const Material& material);
  // Only after every server using credentials() is destroyed: gRPC reads the files until
  // then.
  ~ServerTls();

  std::shared_ptr<grpc::ServerCredentials> credentials() const { return credentials_; }

  // Serves `material` (read from the same paths as Create's) from gRPC's next read on.
  absl::Status Install(const Material& material);

 private:
  ServerTls() = default;
  // Replaces the file open at `fd` by one holding `contents`.
  absl::Status Replace(int fd, const std::string& contents);

  int identity_fd_ = -1;
  int client_ca_fd_ = -1;
  int64_t generation_ = 0;  // The modification time, in seconds, of the files' last version.
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
};

}  // namespace execd::server
