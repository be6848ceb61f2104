#include "server/tls.h"

#include <fcntl.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/status_macros.h"
#include "server/auth.h"

namespace execd::server {
namespace {

constexpr size_t kMaxFileBytes = 1 << 20;  // Far more than any PEM file needs.

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Certificate = std::unique_ptr<X509, X509Free>;
using Key = std::unique_ptr<EVP_PKEY, PkeyFree>;

// An encrypted key needs a passphrase execd has no way to ask for: refuse rather than
// prompt on a terminal.
int NoPassphrase(char*, int, int, void*) { return -1; }

std::string Flag(absl::string_view flag, const std::string& path) {
  return absl::StrCat("--", flag, "=", path);
}

Bio MemoryBio(const std::string& data) {
  return Bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string Printed(const std::function<void(BIO*)>& print) {
  Bio out(BIO_new(BIO_s_mem()));
  print(out.get());
  char* data = nullptr;
  const long n = BIO_get_mem_data(out.get(), &data);
  return std::string(data, n > 0 ? static_cast<size_t>(n) : 0);
}

std::string Subject(X509* cert) {
  return Printed([cert](BIO* out) {
    X509_NAME_print_ex(out, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  });
}

std::string Time(const ASN1_TIME* time) {
  return Printed([time](BIO* out) { ASN1_TIME_print(out, time); });
}

// Every certificate in `pem`, in order; an error when there is none or one does not parse.
absl::StatusOr<std::vector<Certificate>> Certificates(absl::string_view flag,
                                                      const std::string& path,
                                                      const std::string& pem) {
  Bio in = MemoryBio(pem);
  std::vector<Certificate> certificates;
  ERR_clear_error();
  while (X509* cert = PEM_read_bio_X509(in.get(), nullptr, NoPassphrase, nullptr)) {
    certificates.emplace_back(cert);
  }
  // Reading stops at the end of the file with "no start line"; anything else is a
  // certificate that does not parse.
  const unsigned long error = ERR_peek_last_error();
  ERR_clear_error();
  if (error != 0 && ERR_GET_REASON(error) != PEM_R_NO_START_LINE) {
    return absl::InvalidArgumentError(absl::StrCat(Flag(flag, path), ": certificate ",
                                                   certificates.size() + 1, " does not parse (",
                                                   ERR_reason_error_string(error), ")"));
  }
  if (certificates.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Flag(flag, path), ": no PEM certificate in it (-----BEGIN CERTIFICATE-----)"));
  }
  return certificates;
}

absl::StatusOr<Key> PrivateKey(const std::string& path, const std::string& pem) {
  Bio in = MemoryBio(pem);
  ERR_clear_error();
  Key key(PEM_read_bio_PrivateKey(in.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (key != nullptr) return key;
  if (absl::StrContains(pem, "ENCRYPTED")) {
    return absl::InvalidArgumentError(absl::StrCat(
        Flag("tls_key", path),
        ": the key is encrypted, and execd cannot ask for its passphrase; give it the key "
        "decrypted (openssl pkey -in KEY -out KEY.plain) in a file only execd's user can read"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      Flag("tls_key", path), ": no PEM private key in it (-----BEGIN PRIVATE KEY-----)"));
}

std::string ProcPath(int fd) { return absl::StrCat("/proc/self/fd/", fd); }

// A close-on-exec memfd holding `contents`, its times set to `seconds` since the epoch.
absl::StatusOr<int> MemoryFile(const std::string& contents, int64_t seconds) {
  const int fd = memfd_create("execd-tls", MFD_CLOEXEC);
  if (fd < 0) return core::ErrnoToStatus(errno, "memfd_create");
  for (size_t done = 0; done < contents.size();) {
    const ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status error = core::ErrnoToStatus(errno, "write to memfd");
      close(fd);
      return error;
    }
    done += static_cast<size_t>(n);
  }
  const timespec times[2] = {{seconds, 0}, {seconds, 0}};
  if (futimens(fd, times) != 0) {
    absl::Status error = core::ErrnoToStatus(errno, "futimens on memfd");
    close(fd);
    return error;
  }
  return fd;
}

}  // namespace

absl::StatusOr<ServerTls::Material> ServerTls::Read(const Paths& paths) {
  ASSIGN_OR_RETURN(std::string chain_pem, ReadFlagFile("tls_cert", paths.cert, kMaxFileBytes));
  ASSIGN_OR_RETURN(std::string key_pem, ReadFlagFile("tls_key", paths.key, kMaxFileBytes));
  ASSIGN_OR_RETURN(std::vector<Certificate> chain, Certificates("tls_cert", paths.cert, chain_pem));
  X509* leaf = chain.front().get();
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(Flag("tls_cert", paths.cert),
                                                   ": the certificate expired on ",
                                                   Time(X509_get0_notAfter(leaf)), "; renew it"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Flag("tls_cert", paths.cert), ": the certificate is not valid before ",
                     Time(X509_get0_notBefore(leaf)), "; is this machine's clock right?"));
  }
  ASSIGN_OR_RETURN(Key key, PrivateKey(paths.key, key_pem));
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        Flag("tls_key", paths.key), " is not the key of the certificate in ",
        Flag("tls_cert", paths.cert), " (", Subject(leaf), "): give the key it was made with"));
  }
  Material material;
  material.identity = absl::StrCat(key_pem, "\n", chain_pem);
  material.summary = absl::StrCat("tls_subject=\"", Subject(leaf), "\" tls_not_after=\"",
                                  Time(X509_get0_notAfter(leaf)), "\"");
  if (!paths.client_ca.empty()) {
    ASSIGN_OR_RETURN(material.client_ca,
                     ReadFlagFile("tls_client_ca", paths.client_ca, kMaxFileBytes));
    ASSIGN_OR_RETURN(std::vector<Certificate> cas,
                     Certificates("tls_client_ca", paths.client_ca, material.client_ca));
    absl::StrAppend(&material.summary, " tls_client_cas=", cas.size());
  }
  return material;
}

absl::StatusOr<std::unique_ptr<ServerTls>> ServerTls::Create(const Material& material) {
  std::unique_ptr<ServerTls> tls(new ServerTls);
  tls->generation_ = 1;  // gRPC takes a modification time of 0 for a failure.
  ASSIGN_OR_RETURN(tls->identity_fd_, MemoryFile(material.identity, tls->generation_));
  const bool mutual = !material.client_ca.empty();
  if (mutual) {
    ASSIGN_OR_RETURN(tls->client_ca_fd_, MemoryFile(material.client_ca, tls->generation_));
  }
  const std::string identity = ProcPath(tls->identity_fd_);
  // Reads the files once before returning, so the first handshake has them.
  tls->provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      identity, identity, mutual ? ProcPath(tls->client_ca_fd_) : "",
      static_cast<unsigned int>(absl::ToInt64Seconds(kRefresh)));
  grpc::experimental::TlsServerCredentialsOptions options(tls->provider_);
  options.watch_identity_key_cert_pairs();
  if (mutual) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  tls->credentials_ = grpc::experimental::TlsServerCredentials(options);
  if (tls->credentials_ == nullptr) {
    return absl::InternalError("gRPC made no TLS server credentials from --tls_cert and --tls_key");
  }
  return tls;
}

ServerTls::~ServerTls() {
  // gRPC's reader goes with the last reference to the provider; the files stay open until
  // then, so that it never reads whatever a reused descriptor number would name.
  credentials_.reset();
  provider_.reset();
  if (identity_fd_ >= 0) close(identity_fd_);
  if (client_ca_fd_ >= 0) close(client_ca_fd_);
}

absl::Status ServerTls::Replace(int fd, const std::string& contents) {
  ASSIGN_OR_RETURN(int replacement, MemoryFile(contents, generation_));
  // One step: gRPC reads either the old file or the new one, never a mix.
  const int rc = dup3(replacement, fd, O_CLOEXEC);
  const int saved = errno;
  close(replacement);
  if (rc < 0) return core::ErrnoToStatus(saved, "dup3 onto the TLS memfd");
  return absl::OkStatus();
}

absl::Status ServerTls::Install(const Material& material) {
  ++generation_;
  if (client_ca_fd_ >= 0) RETURN_IF_ERROR(Replace(client_ca_fd_, material.client_ca));
  return Replace(identity_fd_, material.identity);
}

}  // namespace execd::server
