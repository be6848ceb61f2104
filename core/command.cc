#include "core/command.h"

#include <sys/wait.h>

namespace execd::core {

FileIdentity FileIdentity::FromStat(const struct stat& st) {
  return FileIdentity{true,
                      static_cast<int64_t>(st.st_dev),
                      static_cast<int64_t>(st.st_ino),
                      static_cast<int64_t>(st.st_size),
                      st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
                      st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec};
}

FileIdentity FileIdentity::Of(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? FromStat(st) : FileIdentity{};
}

absl::string_view TerminationName(Termination t) {
  switch (t) {
    case Termination::kExited:
      return "EXITED";
    case Termination::kSignaled:
      return "SIGNALED";
    case Termination::kTimedOut:
      return "TIMED_OUT";
    case Termination::kOutputLimitExceeded:
      return "OUTPUT_LIMIT_EXCEEDED";
    case Termination::kCancelled:
      return "CANCELLED";
    case Termination::kMemoryLimitExceeded:
      return "MEMORY_LIMIT_EXCEEDED";
    case Termination::kCpuTimeLimitExceeded:
      return "CPU_TIME_LIMIT_EXCEEDED";
    case Termination::kFileSizeLimitExceeded:
      return "FILE_SIZE_LIMIT_EXCEEDED";
    case Termination::kProcessLimitExceeded:
      return "PROCESS_LIMIT_EXCEEDED";
  }
  return "UNKNOWN";
}

ExitStatus ExitStatus::FromWaitStatus(int wait_status) {
  ExitStatus s;
  if (WIFEXITED(wait_status)) {
    s.exited = true;
    s.code = WEXITSTATUS(wait_status);
  } else if (WIFSIGNALED(wait_status)) {
    s.signal = WTERMSIG(wait_status);
  }
  return s;
}

}  // namespace execd::core
