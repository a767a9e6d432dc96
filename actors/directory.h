// Which actor serves which name right now. The supervisor writes it as children start and stop;
// the transport threads read it to route calls.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include <caf/actor.hpp>

namespace cairn {

class Directory {
 public:
  void set(const std::string& name, caf::actor actor);
  void erase(const std::string& name);
  // An invalid handle when nothing serves `name` now (restarting, failed, never started).
  caf::actor find(const std::string& name) const;

 private:
  mutable std::mutex mutex_;  // guards actors_
  std::map<std::string, caf::actor> actors_;
};

}  // namespace cairn
