#include "actors/directory.h"
#include "actors/messages.h"

namespace cairn {

void register_message_types(caf::actor_system_config& config) {
  config.add_message_type<CallMessage>("cairn.call");
}

void Directory::set(const std::string& name, caf::actor actor) {
  std::lock_guard<std::mutex> lock(mutex_);
  actors_[name] = std::move(actor);
}

void Directory::erase(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  actors_.erase(name);
}

caf::actor Directory::find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = actors_.find(name);
  return it == actors_.end() ? caf::actor() : it->second;
}

}  // namespace cairn
