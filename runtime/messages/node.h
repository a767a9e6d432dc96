// Message catalogue of the `node` domain (handshake, liveness, status, supervision). Wire names and
// field names here are part of protocol version 1 (docs/PROTOCOL.md): never rename them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/wire.h"

namespace cairn {

// What a token may do. Ordered: a higher role may do everything a lower one may.
enum class Role : uint8_t { none = 0, client = 1, admin = 2 };
std::string_view role_name(Role role);
std::optional<Role> role_from_name(std::string_view name);

namespace msg {

inline constexpr std::string_view kPing = "node.ping";
inline constexpr std::string_view kEcho = "node.echo";
inline constexpr std::string_view kStatus = "node.status";
inline constexpr std::string_view kEvents = "node.events";
inline constexpr std::string_view kKillActor = "node.kill_actor";
inline constexpr std::string_view kSetLogLevel = "node.set_log_level";
inline constexpr std::string_view kShutdown = "node.shutdown";

struct Hello {
  uint32_t version = 0;
  std::string token;
  std::string client;
  template <class V>
  void fields(V& v) {
    v("version", version);
    v("token", token);
    v.optional("client", client);
  }
};

struct Welcome {
  uint32_t version = 0;
  std::string server;
  std::string node;
  std::string node_id;
  std::string role;
  uint64_t max_frame_bytes = 0;
  template <class V>
  void fields(V& v) {
    v("version", version);
    v("server", server);
    v("node", node);
    v("node_id", node_id);
    v("role", role);
    v("max_frame_bytes", max_frame_bytes);
  }
};

struct Empty {
  template <class V>
  void fields(V&) {}
};

struct Echo {
  wire::Raw payload;
  template <class V>
  void fields(V& v) { v("payload", payload); }
};

struct ActorStatus {
  std::string name;
  std::string state;  // running, restarting, failed
  uint64_t restarts = 0;
  int64_t mailbox = -1;  // -1: the actor did not answer in time
  std::string last_error;
  template <class V>
  void fields(V& v) {
    v("name", name);
    v("state", state);
    v("restarts", restarts);
    v("mailbox", mailbox);
    v("last_error", last_error);
  }
};

struct NodeStatus {
  std::string node;
  std::string node_id;
  std::string version;
  std::string state;  // running, stopping, failed
  uint64_t pid = 0;
  uint64_t uptime_ms = 0;
  uint64_t boot_count = 0;
  std::string data_dir;
  std::string protocol;
  std::string http;
  bool tls = false;
  uint64_t connections = 0;
  std::vector<ActorStatus> actors;
  template <class V>
  void fields(V& v) {
    v("node", node);
    v("node_id", node_id);
    v("version", version);
    v("state", state);
    v("pid", pid);
    v("uptime_ms", uptime_ms);
    v("boot_count", boot_count);
    v("data_dir", data_dir);
    v("protocol", protocol);
    v("http", http);
    v("tls", tls);
    v("connections", connections);
    v("actors", actors);
  }
};

struct EventsRequest {
  bool replay = false;
  template <class V>
  void fields(V& v) { v.optional("replay", replay); }
};

// One supervisor event, streamed by node.events.
struct NodeEvent {
  uint64_t seq = 0;
  uint64_t time_ms = 0;
  std::string actor;
  std::string event;  // started, crashed, restarting, restarted, failed, escalated
  std::string detail;
  uint64_t restarts = 0;
  template <class V>
  void fields(V& v) {
    v("seq", seq);
    v("time_ms", time_ms);
    v("actor", actor);
    v("event", event);
    v("detail", detail);
    v("restarts", restarts);
  }
};

struct KillActor {
  std::string name;
  template <class V>
  void fields(V& v) { v("name", name); }
};

struct SetLogLevel {
  std::string level;
  template <class V>
  void fields(V& v) { v("level", level); }
};

struct SetLogLevelReply {
  std::string previous;
  template <class V>
  void fields(V& v) { v("previous", previous); }
};

struct Cancel {
  uint64_t id = 0;
  template <class V>
  void fields(V& v) { v("id", id); }
};

}  // namespace msg
}  // namespace cairn
