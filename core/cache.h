// ResultCache: the store behind the result cache (issue 6): sharded by key, bounded in
// bytes, entries with a time to live. Eviction is least-recently-used; with the TinyLFU
// policy a newcomer is admitted only when it has been asked for more often than the entry
// it would evict (Einziger, Friedman, Manes: "TinyLFU: A Highly Efficient Cache Admission
// Policy", 2017), so a one-off scan does not flush the hot entries. Frequencies come from
// a count-min sketch of 4-bit-wide counters per shard, halved periodically so the past
// fades.
//
// Keys are opaque byte strings (a cryptographic digest of everything that can change a
// result). Thread-safe; each shard has its own lock.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/command.h"
#include "core/stats.h"

namespace execd::core {

// The cache's stats, each once: X(type, name, what); see core/stats.h.
#define EXECD_CACHE_STATS(X)                                \
  X(int64_t, bytes, "bytes held by entries")                \
  X(int64_t, entries, "entries held")                       \
  X(int64_t, hits, "lookups answered from an entry")        \
  X(int64_t, misses, "lookups not answered")                \
  X(int64_t, evictions, "entries evicted for room")         \
  X(int64_t, rejections, "newcomers TinyLFU did not admit") \
  X(int64_t, expirations, "entries dropped past their TTL")

// Whether `result` may be stored: only a clean success is, that is every program exited
// with 0 by itself (a pipeline's too), nothing truncated, no limit hit.
bool CleanSuccess(const Result& result);

struct CachedResult {
  Result result;
  absl::Time stored;
  absl::Time expires;
  // stdout/stderr hold lz4 frames (kept compressed when that saves memory); Restore()
  // gives the plain result.
  bool stdout_lz4 = false;
  bool stderr_lz4 = false;
  // The larger of stdout and stderr, uncompressed: a request whose output cap is smaller
  // would have been truncated, so this result is not its result.
  int64_t largest_output = 0;

  // A stored entry for `result`, its large compressible outputs lz4-compressed.
  static std::shared_ptr<CachedResult> Make(const Result& result, absl::Time stored,
                                            absl::Time expires);
  // The result as stored, decompressed.
  Result Restore() const;
};

class ResultCache {
 public:
  enum class Policy { kLru, kTinyLfu };
  struct Options {
    int64_t max_bytes = 256 << 20;
    int shards = 16;
    Policy policy = Policy::kTinyLfu;
  };
  struct Stats {
    EXECD_CACHE_STATS(EXECD_STAT_FIELD)
  };

  explicit ResultCache(const Options& options);
  ~ResultCache();

  // The live entry for `key` at `now` whose output fits `max_output_bytes` per stream, or
  // null. Counts towards the key's frequency either way.
  std::shared_ptr<const CachedResult> Lookup(const std::string& key, absl::Time now,
                                             int64_t max_output_bytes = INT64_MAX);
  // Stores `entry` (replacing any entry of `key`) if it fits and, with TinyLFU, if it
  // wins admission. Returns whether it was stored.
  bool Insert(const std::string& key, std::shared_ptr<const CachedResult> entry);
  Stats stats() const;

  // What an entry is charged: the memory it holds (output buffers, key copies, stages) plus
  // a fixed overhead for the entry and its bookkeeping.
  static int64_t Charge(const std::string& key, const CachedResult& entry);

 private:
  class Shard;
  Shard& ShardOf(const std::string& key, uint64_t* hash);
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace execd::core
