// PoolSet: the engine's worker pools, by name. The pools themselves live on the engine's
// loop (created here, started, reconfigured and destroyed there); their configurations can
// be read from any thread without a round trip to the loop.
//
// Thread-safety: Find, Names, IndexOf and Statuses from any thread, without a round trip
// to the loop; at() on the loop thread; Update from any thread but the loop's and gRPC's
// (it waits for the loop).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/event_loop.h"
#include "core/pool.h"

namespace execd::core {

struct PoolStatus {
  std::string name;
  PoolSpec::Kind kind;
  PoolStats stats;
};

class PoolSet {
 public:
  // Creates a pool for each of `specs` (validated, names unique) and starts them on `loop`.
  PoolSet(EventLoop& loop, const std::vector<PoolSpec>& specs, const Pool::Deps& deps);
  // Destroys the pools on the loop, and waits for that.
  ~PoolSet();

  int size() const { return static_cast<int>(pools_.size()); }
  // The index of the pool named `name`, or -1.
  int IndexOf(absl::string_view name) const;
  // Loop thread.
  Pool* at(int index) { return pools_[index].get(); }

  // The current configuration of the pool named `name`, or null.
  std::shared_ptr<const PoolSpec> Find(absl::string_view name) const;
  std::vector<std::string> Names() const;

  // A new configuration of the same pools (same names and kinds; FAILED_PRECONDITION and no
  // change otherwise): records it, and has each pool whose configuration changed reconfigure
  // on the loop, and waits for them to have. Returns those pools' indices and new
  // configurations.
  absl::StatusOr<std::vector<std::pair<int, std::shared_ptr<const PoolSpec>>>> Update(
      std::vector<PoolSpec> specs);

  std::vector<PoolStatus> Statuses() const;

 private:
  EventLoop& loop_;
  std::vector<std::unique_ptr<Pool>> pools_;     // Loop thread, but for their creation.
  absl::flat_hash_map<std::string, int> index_;  // Name to index; immutable.
  mutable absl::Mutex specs_mu_;
  std::vector<std::shared_ptr<const PoolSpec>> specs_ ABSL_GUARDED_BY(specs_mu_);
};

}  // namespace execd::core
