// Request and response messages of a unary RPC allocated on one protobuf Arena per call:
// their strings and sub-messages come from one block instead of a malloc each, and are
// freed at once when the call ends. gRPC's MessageAllocator hook for the callback API.
#pragma once

#include <google/protobuf/arena.h>
#include <grpcpp/support/message_allocator.h>

#include <cstddef>
#include <vector>

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

 private:
  class Holder final : public grpc::MessageHolder<Request, Response> {
   public:
    Holder() : arena_(Options(initial_block_)) {}
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
      for (Holder* holder : holders_) delete holder;
    }
    Holder* Take() {
      if (holders_.empty()) return nullptr;
      Holder* holder = holders_.back();
      holders_.pop_back();
      return holder;
    }
    bool Put(Holder* holder) {
      if (holders_.size() >= kMax) return false;
      holders_.push_back(holder);
      return true;
    }

   private:
    static constexpr size_t kMax = 16;
    std::vector<Holder*> holders_;
  };
  static SpareHolders& Spares() {
    thread_local SpareHolders spares;
    return spares;
  }
};

}  // namespace execd::server
