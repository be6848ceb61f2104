// Request and response messages of a unary RPC allocated on one protobuf Arena per call:
// their strings and sub-messages come from one block instead of a malloc each, and are
// freed at once when the call ends. gRPC's MessageAllocator hook for the callback API.
#pragma once

#include <google/protobuf/arena.h>
#include <grpcpp/support/message_allocator.h>

#include <cstddef>

namespace execd::server {

template <class Request, class Response>
class ArenaMessageAllocator final : public grpc::MessageAllocator<Request, Response> {
 public:
  grpc::MessageHolder<Request, Response>* AllocateMessages() override { return new Holder; }

 private:
  class Holder final : public grpc::MessageHolder<Request, Response> {
   public:
    Holder() : arena_(Options(initial_block_)) {
      this->set_request(google::protobuf::Arena::CreateMessage<Request>(&arena_));
      this->set_response(google::protobuf::Arena::CreateMessage<Response>(&arena_));
    }
    void Release() override { delete this; }

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
};

}  // namespace execd::server
