// Test support: certificates for tests of TLS and mutual TLS, made with the openssl command
// line when the test runs (nothing secret is checked in, nothing expires in the tree).
#pragma once

#include <string>

#include "absl/status/status.h"

namespace execd::testing {

// In `dir`, each as NAME.pem (certificate) and NAME.key (unencrypted EC P-256 key):
//   ca                   a CA
//   server               signed by ca, for 127.0.0.1 and localhost
//   alice, bob           clients signed by ca, CN=alice and CN=bob
//   expired              a client signed by ca, CN=expired, no longer valid
//   other_ca             another CA
//   other_server         signed by other_ca, for 127.0.0.1 and localhost
//   mallory              a client signed by other_ca, CN=mallory
// and encrypted.key, server.key under a passphrase. Says why when openssl fails.
absl::Status MakeTestCertificates(const std::string& dir);

}  // namespace execd::testing
