#include "tests/support/certificates.h"

#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/support/subprocess.h"

namespace execd::testing {
namespace {

absl::Status OpenSsl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  const ProcessResult r = RunProcess(argv, "", absl::Seconds(30));
  if (r.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat(absl::StrJoin(argv, " "), " failed (", r.exit_code, "): ", r.err));
  }
  return absl::OkStatus();
}

std::vector<std::string> NewKey(const std::string& dir, const std::string& name) {
  return {"-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:P-256",
          "-nodes",
          "-keyout",
          absl::StrCat(dir, "/", name, ".key")};
}

absl::Status Ca(const std::string& dir, const std::string& name) {
  std::vector<std::string> args = {"req", "-x509"};
  for (std::string& a : NewKey(dir, name)) args.push_back(std::move(a));
  args.insert(args.end(), {"-out", absl::StrCat(dir, "/", name, ".pem"), "-subj",
                           absl::StrCat("/CN=execd test ", name), "-days", "2"});
  return OpenSsl(args);
}

// A certificate for `name` signed by `ca`, valid for `days` (negative: expired).
absl::Status Leaf(const std::string& dir, const std::string& name, const std::string& ca, int days,
                  bool server, int serial) {
  const std::string base = absl::StrCat(dir, "/", name);
  std::vector<std::string> request = {"req"};
  for (std::string& a : NewKey(dir, name)) request.push_back(std::move(a));
  request.insert(request.end(), {"-out", base + ".csr", "-subj", "/CN=" + name});
  if (absl::Status s = OpenSsl(request); !s.ok()) return s;
  std::vector<std::string> sign = {"x509",        "-req",
                                   "-in",         base + ".csr",
                                   "-CA",         absl::StrCat(dir, "/", ca, ".pem"),
                                   "-CAkey",      absl::StrCat(dir, "/", ca, ".key"),
                                   "-set_serial", absl::StrCat(serial),
                                   "-days",       absl::StrCat(days),
                                   "-out",        base + ".pem"};
  if (server) {
    std::ofstream(base + ".ext") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    sign.insert(sign.end(), {"-extfile", base + ".ext"});
  }
  return OpenSsl(sign);
}

}  // namespace

absl::Status MakeTestCertificates(const std::string& dir) {
  int serial = 1;
  for (const char* ca : {"ca", "other_ca"}) {
    if (absl::Status s = Ca(dir, ca); !s.ok()) return s;
  }
  struct Spec {
    const char* name;
    const char* ca;
    int days;
    bool server;
  };
  for (const Spec& spec :
       {Spec{"server", "ca", 2, true}, Spec{"other_server", "other_ca", 2, true},
        Spec{"alice", "ca", 2, false}, Spec{"bob", "ca", 2, false},
        Spec{"expired", "ca", -1, false}, Spec{"mallory", "other_ca", 2, false}}) {
    if (absl::Status s = Leaf(dir, spec.name, spec.ca, spec.days, spec.server, serial++); !s.ok()) {
      return s;
    }
  }
  return OpenSsl({"pkey", "-in", dir + "/server.key", "-aes256", "-passout", "pass:secret-words",
                  "-out", dir + "/encrypted.key"});
}

}  // namespace execd::testing
