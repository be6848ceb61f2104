// Request and response messages of a unary RPC allocated on one protobuf Arena per call:
// their strings and sub-messages come from one block instead of a malloc each, and are
// freed at once when the call ends. gRPC's MessageAllocator hook for the callback API.
#pragma once

#include <google/protobuf/arena.h>
#include <grpcpp/support/message_allocator.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define EXECD_ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define EXECD_ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define EXECD_ASAN_POISON(p, n) ((void)(p), (void)(n))
#define EXECD_ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace execd::server {

template <class Request, class Response>
class ArenaMessageAllocator final : public grpc::MessageAllocator<Request, Response> {
 public:
  grpc::MessageHolder<Request, Response>* AllocateMessages() override {
    Holder* holder = Spares().Take();
    if (holder == nullptr) holder = new Holder;
    holder->CreateMessages();
    return holder;
  }
  // Holders in existence, in use or kept, over all threads (for tests: the bound).
  static int64_t live_holders() { return live_.load(std::memory_order_relaxed); }

 private:
  class Holder final : public grpc::MessageHolder<Request, Response> {
   public:
    Holder() : arena_(Options(initial_block_)) { live_.fetch_add(1, std::memory_order_relaxed); }
    ~Holder() override { live_.fetch_sub(1, std::memory_order_relaxed); }
    void CreateMessages() {
      this->set_request(google::protobuf::Arena::CreateMessage<Request>(&arena_));
      this->set_response(google::protobuf::Arena::CreateMessage<Response>(&arena_));
    }
    // The call is over: its messages go (the arena keeps its first block) and the holder
    // is kept for another call on this thread, or deleted if the thread has enough.
    void Release() override {
      arena_.Reset();
      if (!Spares().Put(this)) delete this;
    }
    // A kept holder's first block is off limits until it is taken again: under ASan, a
    // late use of a finished call's messages is reported as it would be had they been
    // freed, not left to corrupt the next call's.
    void Park() { EXECD_ASAN_POISON(initial_block_, kInitialBlock); }
    void Unpark() { EXECD_ASAN_UNPOISON(initial_block_, kInitialBlock); }

   private:
    static google::protobuf::ArenaOptions Options(char* block) {
      google::protobuf::ArenaOptions options;
      options.initial_block = block;
      options.initial_block_size = kInitialBlock;
      return options;
    }
    // Enough for a typical request and its response without another allocation.
    static constexpr size_t kInitialBlock = 2048;
    alignas(16) char initial_block_[kInitialBlock];
    google::protobuf::Arena arena_;  // After the block it starts in.
  };

  // Holders released on this thread, reused before a new one is allocated: a holder is
  // larger than malloc's per-thread caches take, and allocating and freeing one per call
  // cost more than the rest of the allocator. Bounded; freed when the thread ends.
  class SpareHolders {
   public:
    ~SpareHolders() {
      for (Holder* holder : holders_) {
        holder->Unpark();
        delete holder;
      }
    }
    Holder* Take() {
      if (holders_.empty()) return nullptr;
      Holder* holder = holders_.back();
      holders_.pop_back();
      holder->Unpark();
      return holder;
    }
    bool Put(Holder* holder) {
      if (holders_.size() >= kMax) return false;
      holder->Park();
      holders_.push_back(holder);
      return true;
    }

   private:
    static constexpr size_t kMax = 16;
    std::vector<Holder*> holders_;
  };
  static inline std::atomic<int64_t> live_{0};
  static SpareHolders& Spares() {
    thread_local SpareHolders spares;
    return spares;
  }
};

}  // namespace execd::server
