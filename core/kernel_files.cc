#include "core/kernel_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/unique_fd.h"

namespace execd::core {

std::string ReadAt0(int fd) {
  std::string out;
  char buf[4096];
  for (off_t offset = 0;;) {
    ssize_t n = pread(fd, buf, sizeof(buf), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    offset += n;
  }
  return out;
}

std::string ReadSmallAt0(int fd) {
  char buf[256];
  ssize_t n;
  while ((n = pread(fd, buf, sizeof(buf), 0)) < 0 && errno == EINTR) {
  }
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string ReadFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  return fd.valid() ? ReadAt0(fd.get()) : std::string();
}

int64_t ResidentBytes(pid_t pid) {
  const std::string text = ReadFile(absl::StrCat("/proc/", pid, "/statm"));
  const std::vector<absl::string_view> statm = absl::StrSplit(text, ' ');
  int64_t pages = 0;
  if (statm.size() < 2 || !absl::SimpleAtoi(statm[1], &pages)) return 0;
  return pages * sysconf(_SC_PAGESIZE);
}

bool WriteFile(const std::string& path, absl::string_view value) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
  close(fd);
  return ok;
}

int64_t KeyedValueIn(const std::string& contents, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(line, ' ');
    int64_t value = 0;
    if (kv.first == key && absl::SimpleAtoi(kv.second, &value)) return value;
  }
  return 0;
}

}  // namespace execd::core
