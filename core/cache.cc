#include "core/cache.h"

#include <algorithm>
#include <array>

#include "absl/hash/hash.h"
#include "core/compress.h"

namespace execd::core {
namespace {

// The index's key: a view of the key held by an LRU node, with the key's hash, which
// ShardOf computed once for the call and the index uses rather than hash the key again.
struct IndexKey {
  uint64_t hash;
  absl::string_view bytes;
  bool operator==(const IndexKey& other) const { return bytes == other.bytes; }
};
struct IndexHash {
  size_t operator()(const IndexKey& k) const { return k.hash; }
};

// What an entry costs besides its key and output: the entry with its shared_ptr control
// block, its LRU node (key, hash, charge, entry, links) and its index slot (IndexKey,
// iterator), and room for the allocator's rounding and the index's spare slots. The key's
// bytes are held once, in the node.
constexpr int64_t kEntryOverhead =
    sizeof(CachedResult) + 2 * sizeof(void*) +
    (sizeof(std::string) + 2 * sizeof(int64_t) + sizeof(std::shared_ptr<const CachedResult>) +
     2 * sizeof(void*)) +
    (sizeof(IndexKey) + sizeof(void*)) + 64;

// Count-min sketch with 4 rows of saturating counters (0..15), halved every `sample`
// increments.
class FrequencySketch {
 public:
  explicit FrequencySketch(size_t width) : width_(std::max<size_t>(64, width)) {
    for (auto& row : rows_) row.assign(width_, 0);
    sample_ = 10 * width_;
  }
  void Increment(uint64_t hash) {
    for (size_t r = 0; r < rows_.size(); ++r) {
      uint8_t& c = rows_[r][Index(hash, r)];
      if (c < 15) ++c;
    }
    if (++additions_ >= sample_) Age();
  }
  int Estimate(uint64_t hash) const {
    int est = 15;
    for (size_t r = 0; r < rows_.size(); ++r) est = std::min<int>(est, rows_[r][Index(hash, r)]);
    return est;
  }

 private:
  size_t Index(uint64_t hash, size_t row) const {
    uint64_t h = hash * (0x9E3779B97F4A7C15ull + 2 * row) + row;
    return static_cast<size_t>((h >> 32) % width_);
  }
  void Age() {
    for (auto& row : rows_) {
      for (uint8_t& c : row) c >>= 1;
    }
    additions_ /= 2;
  }
  const size_t width_;
  std::array<std::vector<uint8_t>, 4> rows_;
  size_t sample_;
  size_t additions_ = 0;
};

}  // namespace

class ResultCache::Shard {
 public:
  Shard(int64_t max_bytes, Policy policy)
      : max_bytes_(max_bytes),
        policy_(policy),
        // About one counter per 4 KiB of budget: enough resolution for typical outputs.
        sketch_(static_cast<size_t>(std::max<int64_t>(1024, max_bytes / 4096))) {}

  std::shared_ptr<const CachedResult> Lookup(const std::string& key, uint64_t hash, absl::Time now,
                                             int64_t max_output_bytes) {
    absl::MutexLock lock(&mu_);
    sketch_.Increment(hash);
    auto it = index_.find(IndexKey{hash, key});
    if (it == index_.end()) {
      ++stats_.misses;
      return nullptr;
    }
    if (it->second->entry->expires <= now) {
      ++stats_.expirations;
      ++stats_.misses;
      Erase(it->second);
      return nullptr;
    }
    if (it->second->entry->largest_output > max_output_bytes) {
      ++stats_.misses;
      return nullptr;
    }
    lru_.splice(lru_.begin(), lru_, it->second);  // Most recent at the front.
    ++stats_.hits;
    return it->second->entry;
  }

  bool Insert(const std::string& key, uint64_t hash, std::shared_ptr<const CachedResult> entry) {
    const int64_t charge = Charge(key, *entry);
    absl::MutexLock lock(&mu_);
    if (auto it = index_.find(IndexKey{hash, key}); it != index_.end()) Erase(it->second);
    if (charge > max_bytes_) {
      ++stats_.rejections;
      return false;
    }
    // Make room from the least recently used end; with TinyLFU each victim must be used
    // less often than the newcomer, or the newcomer is turned away, before anything is
    // evicted for it. An expired victim always goes: it is no one's result any more.
    const absl::Time now = entry->stored;
    if (policy_ == Policy::kTinyLfu) {
      const int candidate = sketch_.Estimate(hash);
      int64_t freed = 0;
      for (auto victim = lru_.rbegin();
           bytes_ - freed + charge > max_bytes_ && victim != lru_.rend(); ++victim) {
        if (victim->entry->expires > now && sketch_.Estimate(victim->hash) >= candidate) {
          ++stats_.rejections;
          return false;
        }
        freed += victim->charge;
      }
    }
    while (bytes_ + charge > max_bytes_ && !lru_.empty()) {
      auto victim = std::prev(lru_.end());
      ++(victim->entry->expires <= now ? stats_.expirations : stats_.evictions);
      Erase(victim);
    }
    lru_.push_front(Node{key, hash, charge, std::move(entry)});
    index_[IndexKey{hash, lru_.front().key}] = lru_.begin();  // Nodes stay put.
    bytes_ += charge;
    return true;
  }

  void AddStats(Stats& out) const {
    absl::MutexLock lock(&mu_);
#define EXECD_ADD_STAT(type, name, what) out.name += stats_.name;
    EXECD_CACHE_STATS(EXECD_ADD_STAT)
#undef EXECD_ADD_STAT
    // stats_ counts events; these two are the shard's state.
    out.bytes += bytes_;
    out.entries += static_cast<int64_t>(lru_.size());
  }

 private:
  struct Node {
    std::string key;
    uint64_t hash;
    int64_t charge;
    std::shared_ptr<const CachedResult> entry;
  };
  void Erase(std::list<Node>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    bytes_ -= it->charge;
    index_.erase(IndexKey{it->hash, it->key});
    lru_.erase(it);
  }

  const int64_t max_bytes_;
  const Policy policy_;
  mutable absl::Mutex mu_;
  FrequencySketch sketch_ ABSL_GUARDED_BY(mu_);
  std::list<Node> lru_ ABSL_GUARDED_BY(mu_);
  // Erased with their nodes.
  absl::flat_hash_map<IndexKey, std::list<Node>::iterator, IndexHash> index_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

ResultCache::ResultCache(const Options& options) {
  const int n = std::max(1, options.shards);
  for (int i = 0; i < n; ++i) {
    shards_.push_back(std::make_unique<Shard>(options.max_bytes / n, options.policy));
  }
}

ResultCache::~ResultCache() = default;

bool CleanSuccess(const Result& result) {
  auto success = [](const ExitStatus& s) { return s.exited && s.code == 0; };
  return result.termination == Termination::kExited && success(result.status) &&
         !result.stdout_truncated && !result.stderr_truncated &&
         std::all_of(result.stages.begin(), result.stages.end(),
                     [&](const StageExit& stage) { return success(stage.status); });
}

std::shared_ptr<CachedResult> CachedResult::Make(const Result& result, absl::Time stored,
                                                 absl::Time expires) {
  auto entry = std::make_shared<CachedResult>();
  entry->result = result;
  entry->stored = stored;
  entry->expires = expires;
  entry->largest_output =
      static_cast<int64_t>(std::max(result.stdout_data.size(), result.stderr_data.size()));
  // Output of 4 KiB or more is kept as an lz4 frame when that saves an eighth or more.
  constexpr size_t kCompressFrom = 4096;
  for (auto [data, flag] : {std::pair{&entry->result.stdout_data, &entry->stdout_lz4},
                            std::pair{&entry->result.stderr_data, &entry->stderr_lz4}}) {
    std::string frame;
    if (data->size() >= kCompressFrom && Lz4CompressIfSmaller(*data, &frame)) {
      // The frame was allocated at lz4's bound, about the input's size: kept as it is, the
      // entry would hold that much memory, not the compressed size it saves for.
      frame.shrink_to_fit();
      *data = std::move(frame);
      *flag = true;
    }
  }
  return entry;
}

Result CachedResult::Restore() const {
  Result out = result;
  for (auto [data, flag] :
       {std::pair{&out.stdout_data, stdout_lz4}, std::pair{&out.stderr_data, stderr_lz4}}) {
    if (!flag) continue;
    // Frames we made ourselves; a failure would be memory corruption, reported as empty.
    auto plain = Lz4Decompress(*data, size_t{1} << 31);
    *data = plain.ok() ? *std::move(plain) : std::string();
  }
  return out;
}

int64_t ResultCache::Charge(const std::string& key, const CachedResult& entry) {
  const Result& r = entry.result;
  return kEntryOverhead +
         static_cast<int64_t>(key.size() + r.stdout_data.capacity() + r.stderr_data.capacity() +
                              r.stages.capacity() * sizeof(StageExit));
}

ResultCache::Shard& ResultCache::ShardOf(const std::string& key, uint64_t* hash) {
  *hash = absl::Hash<std::string>{}(key);
  return *shards_[(*hash >> 48) % shards_.size()];
}

std::shared_ptr<const CachedResult> ResultCache::Lookup(const std::string& key, absl::Time now,
                                                        int64_t max_output_bytes) {
  uint64_t hash;
  return ShardOf(key, &hash).Lookup(key, hash, now, max_output_bytes);
}

bool ResultCache::Insert(const std::string& key, std::shared_ptr<const CachedResult> entry) {
  uint64_t hash;
  return ShardOf(key, &hash).Insert(key, hash, std::move(entry));
}

ResultCache::Stats ResultCache::stats() const {
  Stats s;
  for (const auto& shard : shards_) shard->AddStats(s);
  return s;
}

}  // namespace execd::core
