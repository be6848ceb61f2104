#include "core/cache.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace execd::core {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'000'000);

std::shared_ptr<const CachedResult> Entry(size_t bytes, absl::Duration ttl = absl::Hours(1)) {
  auto e = std::make_shared<CachedResult>();
  e->result.stdout_data = std::string(bytes, 'o');
  e->stored = kNow;
  e->expires = kNow + ttl;
  return e;
}

ResultCache::Options OneShard(int64_t max_bytes, ResultCache::Policy policy) {
  ResultCache::Options o;
  o.max_bytes = max_bytes;
  o.shards = 1;
  o.policy = policy;
  return o;
}

TEST(ResultCache, StoresAndFindsByKey) {
  ResultCache cache(OneShard(1 << 20, ResultCache::Policy::kLru));
  EXPECT_EQ(cache.Lookup("a", kNow), nullptr);
  ASSERT_TRUE(cache.Insert("a", Entry(10)));
  auto hit = cache.Lookup("a", kNow);
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->result.stdout_data, std::string(10, 'o'));
  EXPECT_EQ(cache.Lookup("b", kNow), nullptr);
  EXPECT_EQ(cache.stats().hits, 1);
  EXPECT_EQ(cache.stats().misses, 2);
}

// Storing a key again replaces its entry: one entry, charged once, found with the new
// result. The cache keeps its own copy of each key: the caller's strings (temporaries
// here, gone before the lookups) are not what it compares against.
TEST(ResultCache, StoringAKeyAgainReplacesItsEntry) {
  for (auto policy : {ResultCache::Policy::kLru, ResultCache::Policy::kTinyLfu}) {
    ResultCache cache(OneShard(1 << 20, policy));
    auto key = [](int i) { return absl::StrCat("key-", i, std::string(40, 'x')); };
    ASSERT_TRUE(cache.Insert(key(1), Entry(10)));
    ASSERT_TRUE(cache.Insert(key(2), Entry(20)));
    const int64_t bytes = cache.stats().bytes;
    ASSERT_TRUE(cache.Insert(key(1), Entry(30)));
    EXPECT_EQ(cache.stats().entries, 2);
    EXPECT_EQ(cache.stats().bytes, bytes - ResultCache::Charge(key(1), *Entry(10)) +
                                       ResultCache::Charge(key(1), *Entry(30)));
    auto one = cache.Lookup(key(1), kNow);
    ASSERT_NE(one, nullptr);
    EXPECT_EQ(one->result.stdout_data.size(), 30u);
    auto two = cache.Lookup(key(2), kNow);
    ASSERT_NE(two, nullptr);
    EXPECT_EQ(two->result.stdout_data.size(), 20u);
    EXPECT_EQ(cache.Lookup(key(3), kNow), nullptr);
  }
}

TEST(ResultCache, AnEntryTooLargeForTheCallersOutputCapIsAMiss) {
  ResultCache cache(OneShard(1 << 20, ResultCache::Policy::kLru));
  Result result;
  result.stdout_data = "0123456789";
  result.stderr_data = "abc";
  ASSERT_TRUE(cache.Insert("a", CachedResult::Make(result, kNow, kNow + absl::Hours(1))));
  EXPECT_EQ(cache.Lookup("a", kNow, 9), nullptr);
  EXPECT_NE(cache.Lookup("a", kNow, 10), nullptr);
  EXPECT_EQ(cache.stats().hits, 1);
  EXPECT_EQ(cache.stats().misses, 1);
}

TEST(ResultCache, NeverHoldsMoreBytesThanItsBound) {
  const int64_t kMax = 100'000;
  ResultCache cache(OneShard(kMax, ResultCache::Policy::kLru));
  for (int i = 0; i < 200; ++i) {
    const std::string key = absl::StrCat("k", i);
    cache.Lookup(key, kNow);
    cache.Insert(key, Entry(9'000));
    ASSERT_LE(cache.stats().bytes, kMax) << "after " << i;
  }
  EXPECT_GT(cache.stats().evictions, 0);
  EXPECT_EQ(cache.Lookup("k0", kNow), nullptr);     // The oldest went first.
  EXPECT_NE(cache.Lookup("k199", kNow), nullptr);   // The newest stayed.
  EXPECT_FALSE(cache.Insert("huge", Entry(kMax)));  // Bigger than the whole cache.
}

TEST(ResultCache, EntriesExpireAtTheirTtl) {
  ResultCache cache(OneShard(1 << 20, ResultCache::Policy::kTinyLfu));
  ASSERT_TRUE(cache.Insert("a", Entry(10, absl::Seconds(30))));
  EXPECT_NE(cache.Lookup("a", kNow + absl::Seconds(29)), nullptr);
  EXPECT_EQ(cache.Lookup("a", kNow + absl::Seconds(30)), nullptr);
  EXPECT_EQ(cache.stats().expirations, 1);
  EXPECT_EQ(cache.stats().entries, 0);
}

// A scan of one-off keys flushes an LRU cache but not a TinyLFU one.
TEST(ResultCache, TinyLfuKeepsHotEntriesThroughAScan) {
  for (auto policy : {ResultCache::Policy::kLru, ResultCache::Policy::kTinyLfu}) {
    const int64_t entry = ResultCache::Charge("hot0", *Entry(1000));
    ResultCache cache(OneShard(entry * 10, policy));
    for (int round = 0; round < 5; ++round) {
      for (int i = 0; i < 10; ++i) {
        const std::string key = absl::StrCat("hot", i);
        if (cache.Lookup(key, kNow) == nullptr) cache.Insert(key, Entry(1000));
      }
    }
    for (int i = 0; i < 1000; ++i) {
      const std::string key = absl::StrCat("scan", i);
      if (cache.Lookup(key, kNow) == nullptr) cache.Insert(key, Entry(1000));
    }
    int hot_left = 0;
    for (int i = 0; i < 10; ++i) {
      hot_left += cache.Lookup(absl::StrCat("hot", i), kNow) != nullptr ? 1 : 0;
    }
    if (policy == ResultCache::Policy::kLru) {
      EXPECT_EQ(hot_left, 0);
    } else {
      EXPECT_EQ(hot_left, 10);
      EXPECT_GT(cache.stats().rejections, 900);
    }
  }
}

// TinyLFU turns a newcomer away when a victim it would need is used more often than it;
// then nothing is evicted for it: the colder entries ahead of that victim stay.
TEST(ResultCache, ARejectedNewcomerEvictsNothing) {
  const int64_t entry = ResultCache::Charge("k0", *Entry(1000));
  ResultCache cache(OneShard(entry * 3, ResultCache::Policy::kTinyLfu));
  ASSERT_TRUE(cache.Insert("k0", Entry(1000)));  // Never asked for: the coldest.
  for (const char* hot : {"k1", "k2"}) {
    for (int i = 0; i < 5; ++i) cache.Lookup(hot, kNow);
    ASSERT_TRUE(cache.Insert(hot, Entry(1000)));
  }
  cache.Lookup("big", kNow);  // Asked for once: more than k0, less than k1.
  // Needs two entries' room: k0's and then k1's, which wins.
  EXPECT_FALSE(cache.Insert("big", Entry(2 * 1000 + 100)));
  EXPECT_EQ(cache.stats().evictions, 0);
  EXPECT_EQ(cache.stats().entries, 3);
  EXPECT_NE(cache.Lookup("k0", kNow), nullptr);
}

// An expired entry is no one's result any more, however often it was asked for: it makes
// room for a newcomer instead of turning it away.
TEST(ResultCache, AnExpiredEntryNeverKeepsAFreshOneOut) {
  ResultCache cache(
      OneShard(ResultCache::Charge("old", *Entry(1000)), ResultCache::Policy::kTinyLfu));
  for (int i = 0; i < 10; ++i) cache.Lookup("old", kNow);
  ASSERT_TRUE(cache.Insert("old", Entry(1000, absl::Seconds(1))));
  const absl::Time later = kNow + absl::Hours(1);
  cache.Lookup("new", later);
  auto fresh = std::make_shared<CachedResult>(*Entry(1000));
  fresh->stored = later;
  fresh->expires = later + absl::Hours(1);
  EXPECT_TRUE(cache.Insert("new", fresh));
  EXPECT_NE(cache.Lookup("new", later), nullptr);
}

}  // namespace
}  // namespace execd::core

namespace execd::core {
namespace {

// The byte bound counts memory, not just output: an entry is charged at least for its
// output buffers as allocated, itself, and its key (held in the LRU node, viewed by the
// index).
TEST(CachedResult, IsChargedForAllTheMemoryItHolds) {
  const std::string key(32, 'k');  // A SHA-256 digest.
  Result compressible;
  for (int i = 0; compressible.stdout_data.size() < 100000; ++i)
    absl::StrAppend(&compressible.stdout_data, "line ", i, "\n");
  for (const Result& r : {Result(), compressible}) {
    auto entry = CachedResult::Make(r, kNow, kNow + absl::Hours(1));
    const size_t held = entry->result.stdout_data.capacity() +
                        entry->result.stderr_data.capacity() + sizeof(CachedResult) +
                        sizeof(std::string) + key.size() + sizeof(absl::string_view);
    EXPECT_GE(ResultCache::Charge(key, *entry), static_cast<int64_t>(held))
        << r.stdout_data.size() << " bytes of output";
  }
}

TEST(CachedResult, LargeCompressibleOutputIsStoredCompressedAndRestoredExactly) {
  Result r;
  for (int i = 0; r.stdout_data.size() < 100000; ++i)
    absl::StrAppend(&r.stdout_data, "line ", i, "\n");
  r.stderr_data = "short";
  auto entry = CachedResult::Make(r, kNow, kNow + absl::Hours(1));
  EXPECT_TRUE(entry->stdout_lz4);
  EXPECT_FALSE(entry->stderr_lz4);  // Too small to bother.
  EXPECT_LT(ResultCache::Charge("k", *entry), static_cast<int64_t>(r.stdout_data.size()) / 2);
  Result back = entry->Restore();
  EXPECT_TRUE(back.stdout_data == r.stdout_data);
  EXPECT_EQ(back.stderr_data, "short");
}

}  // namespace
}  // namespace execd::core
