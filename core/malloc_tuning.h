// Heap settings for a process that moves output through chunk-sized buffers.
#pragma once

#include <malloc.h>

namespace execd::core {

// Output moves through 64 KiB buffers (pipe reads, stream messages, gRPC slices), allocated
// and freed by the thousand a second. With glibc's defaults the heap top is trimmed and
// grown again over and over, each time faulting its pages back in: a 1 GiB stream took
// 3.0 s through execd and execctl against 1.8-2.0 s with these (BENCHMARKS.md). Blocks of
// 4 MiB or more still come from mmap and go back to the system when freed, and at most
// 64 MiB of free heap top is kept. Call once, first thing in main.
inline void TuneMallocForStreams() {
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

}  // namespace execd::core
