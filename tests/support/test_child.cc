// execd-test-child: a program that misbehaves on request, for the engine's tests.
//   alloc MB          allocate and touch MB mebibytes, then print "allocated"
//   cpu               spin forever
//   write PATH BYTES  write BYTES bytes to PATH
//   open N            open /dev/null up to N times; print how many opened
//   fork N            keep N children sleeping; print how many forks succeeded; exit 1 if
//                     any failed
//   storm N           start N detached grandchildren (double fork + setsid) that ignore
//                     SIGTERM and sleep; print "stormed"
//   ignore-term       ignore SIGTERM, print "ready", and sleep
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void SleepForever() {
  for (;;) pause();
}

int Alloc(long mb) {
  std::vector<char*> blocks;
  for (long i = 0; i < mb; ++i) {
    char* block = static_cast<char*>(malloc(1 << 20));
    if (block == nullptr) {
      printf("malloc failed after %ld MiB\n", i);
      return 3;
    }
    memset(block, 1, 1 << 20);
    blocks.push_back(block);
  }
  printf("allocated\n");
  return 0;
}

int Write(const char* path, long bytes) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 2;
  std::string chunk(4096, 'x');
  for (long done = 0; done < bytes; done += static_cast<long>(chunk.size())) {
    if (write(fd, chunk.data(), chunk.size()) < 0) {
      perror("write");
      return 4;
    }
  }
  close(fd);
  return 0;
}

int Open(int n) {
  int opened = 0;
  for (int i = 0; i < n; ++i) {
    if (open("/dev/null", O_RDONLY) < 0) break;
    ++opened;
  }
  printf("%d\n", opened);
  return 0;
}

int Fork(int n) {
  int ok = 0;
  for (int i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid == 0) SleepForever();
    if (pid < 0) break;
    ++ok;
  }
  printf("%d\n", ok);
  fflush(stdout);
  return ok == n ? 0 : 1;
}

int Storm(int n) {
  for (int i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      setsid();
      if (fork() == 0) {
        signal(SIGTERM, SIG_IGN);
        SleepForever();
      }
      _exit(0);
    }
    waitpid(pid, nullptr, 0);
  }
  printf("stormed\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "alloc" && argc > 2) return Alloc(atol(argv[2]));
  if (mode == "cpu") {
    std::atomic<unsigned long> spins{0};
    for (;;) spins.fetch_add(1, std::memory_order_relaxed);
  }
  if (mode == "write" && argc > 3) return Write(argv[2], atol(argv[3]));
  if (mode == "open" && argc > 2) return Open(atoi(argv[2]));
  if (mode == "fork" && argc > 2) return Fork(atoi(argv[2]));
  if (mode == "storm" && argc > 2) return Storm(atoi(argv[2]));
  if (mode == "ignore-term") {
    signal(SIGTERM, SIG_IGN);
    printf("ready\n");
    SleepForever();
  }
  fprintf(
      stderr,
      "usage: execd-test-child alloc MB|cpu|write PATH BYTES|open N|fork N|storm N|ignore-term\n");
  return 64;
}
