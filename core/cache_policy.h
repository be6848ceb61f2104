// How a call uses the result cache.
#pragma once

namespace execd::core {

enum class CachePolicy {
  kOff,
  kReadWrite,  // Answer from the cache; store a clean success; identical calls share a run.
  kReadOnly,   // Answer from the cache; store nothing.
  kRefresh,    // Run, and store a clean success.
};

}  // namespace execd::core
