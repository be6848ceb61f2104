// What `touch -d` can and cannot do to a file, for tests of what execd identifies a program
// by: it sets the modification time to any value, and the kernel sets the change time to
// now.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>

#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace execd::testing {

inline bool SameTime(const struct timespec& a, const struct timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

// Sets `path`'s modification time to `mtime`, as `touch -d` does, and returns true once its
// change time differs from `ctime_before`. The kernel stamps change times from a clock that
// moves in ticks of a few milliseconds, so a file changed within the tick that stamped
// `ctime_before` shows the same time: the stamp is renewed until the tick has passed
// (bounded; false if it never does).
inline bool ForgeModificationTime(const std::string& path, const struct timespec& mtime,
                                  const struct timespec& ctime_before) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  struct stat st;
  do {
    const struct timespec times[2] = {{0, UTIME_OMIT}, mtime};
    if (utimensat(AT_FDCWD, path.c_str(), times, 0) != 0 || stat(path.c_str(), &st) != 0) {
      return false;
    }
    if (!SameTime(st.st_ctim, ctime_before)) return SameTime(st.st_mtim, mtime);
  } while (absl::Now() < deadline);
  return false;
}

}  // namespace execd::testing
