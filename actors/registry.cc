#include "actors/registry.h"

#include <algorithm>
#include <exception>
#include <map>
#include <memory>
#include <set>

#include <spdlog/spdlog.h>

#include "actors/messages.h"
#include "runtime/messages/registry.h"
#include "storage/blob_store.h"
#include "storage/registry_store.h"

namespace cairn {
namespace {

// Registry-internal messages, sent by the actor to itself.
// Commit the staged log_batch group: the end of the mailbox round it was queued behind.
using flush_atom = caf::atom_constant<caf::atom("regflush")>;
// Send the next chunk of download N.
using download_step_atom = caf::atom_constant<caf::atom("regdlstep")>;

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Download {
  CallPtr call;
  std::unique_ptr<storage::BlobReader> reader;
  size_t chunk_bytes = 0;
};

struct RegistryState {
  RegistryContext context;
  // The open log_batch group and the calls it answers once committed.
  storage::LogBatchGroup group;
  std::vector<CallPtr> group_calls;
  bool flush_queued = false;  // a flush_atom is in the mailbox
  // Downloads in progress, by a number of their own.
  std::map<uint64_t, Download> downloads;
  uint64_t next_download = 1;
  static inline const char* name = "registry";
};

using Self = caf::stateful_actor<RegistryState>*;

storage::RegistryStore& store(Self self) { return *self->state.context.store; }
storage::BlobStore& blobs(Self self) { return *self->state.context.blobs; }

// ---- answering ----

void answer(const CallPtr& call, const Status& status) {
  if (status.ok()) {
    call->reply(msg::Empty{});
  } else {
    call->fail(status.with_context(call->op()));
  }
}

template <class Reply>
void answer(const CallPtr& call, const Result<Reply>& result) {
  if (result.ok()) {
    call->reply(*result);
  } else {
    call->fail(result.status().with_context(call->op()));
  }
}

// Decodes the body as Request and answers with what `serve` returns (a Status or a Result).
template <class Request, class Serve>
void serve_with(const CallPtr& call, Serve serve) {
  auto request = call->body<Request>();
  if (!request.ok()) {
    call->fail(request.status());
    return;
  }
  answer(call, serve(*request));
}

template <class Reply, class T>
Result<Reply> wrap(Result<T> result) {
  if (!result.ok()) return result.status();
  return Reply{std::move(result).value()};
}

// "client:cairn-cli": the caller's role and, when its hello named one, its client name.
std::string who(const CallPtr& call) {
  std::string out(role_name(call->role()));
  if (!call->client_name().empty()) out += ":" + call->client_name();
  return out;
}

// ---- log_batch group commit ----

void commit_group(Self self) {
  auto& st = self->state;
  if (st.group.empty()) return;
  std::vector<CallPtr> calls;
  calls.swap(st.group_calls);
  const size_t points = st.group.points();
  Status status = store(self).commit(st.group);
  if (!status.ok()) {
    spdlog::error("registry: group commit of {} requests ({} points) failed: {}", calls.size(), points,
                  status.to_string());
  }
  for (const auto& call : calls) answer(call, status);
}

void log_batch(Self self, const CallPtr& call) {
  auto request = call->body<msg::LogBatchRequest>();
  if (!request.ok()) return call->fail(request.status());
  auto& st = self->state;
  Status staged = store(self).stage_log_batch(*request, st.group, unix_ms());
  if (!staged.ok()) return answer(call, staged);
  st.group_calls.push_back(call);
  if (st.group.points() >= st.context.options.max_group_points) {
    commit_group(self);
    return;
  }
  if (!st.flush_queued) {
    // Handled after every message already queued: the group takes in this whole round.
    st.flush_queued = true;
    self->send(self, flush_atom::value);
  }
}

// ---- artifacts ----

void upload_artifact(Self self, const CallPtr& call) {
  serve_with<msg::UploadChunk>(call, [&](const msg::UploadChunk& chunk) -> Result<msg::UploadReply> {
    auto progress = blobs(self).write_chunk(chunk.sha256, chunk.size, chunk.offset, chunk.data.data, chunk.last);
    if (!progress.ok()) return progress.status();
    return msg::UploadReply{progress->received, progress->complete};
  });
}

void download_step(Self self, uint64_t id) {
  auto& st = self->state;
  auto it = st.downloads.find(id);
  if (it == st.downloads.end()) return;
  Download& d = it->second;
  if (d.call->finished()) {  // cancelled, or the connection went away
    st.downloads.erase(it);
    return;
  }
  if (d.call->unsent_bytes() > st.context.options.max_unsent_bytes) {
    self->delayed_send(self, st.context.options.backpressure_retry, download_step_atom::value, id);
    return;
  }
  const uint64_t offset = d.reader->offset();
  auto data = d.reader->read(d.chunk_bytes);
  if (!data.ok()) {
    spdlog::error("registry: download of blob failed: {}", data.status().to_string());
    answer(d.call, data.status());
    st.downloads.erase(it);
    return;
  }
  if (data->empty()) {  // the whole blob was read and verified
    d.call->reply(msg::Empty{});
    st.downloads.erase(it);
    return;
  }
  msg::DownloadChunk chunk;
  chunk.offset = offset;
  chunk.data.data = std::move(data).value();
  d.call->more(chunk);
  self->send(self, download_step_atom::value, id);
}

void download_artifact(Self self, const CallPtr& call) {
  auto request = call->body<msg::DownloadRequest>();
  if (!request.ok()) return call->fail(request.status());
  auto reader = blobs(self).open_reader(request->sha256, request->offset);
  if (!reader.ok()) return answer(call, reader.status());
  auto& st = self->state;
  const auto& options = st.context.options;
  Download d;
  d.call = call;
  d.reader = std::move(reader).value();
  d.chunk_bytes = request->chunk_bytes == 0 ? options.default_chunk_bytes
                                            : std::min(request->chunk_bytes, options.max_chunk_bytes);
  const uint64_t id = st.next_download++;
  st.downloads.emplace(id, std::move(d));
  download_step(self, id);
}

void collect_garbage(Self self, const CallPtr& call) {
  std::set<std::string> referenced;
  Status listed = store(self).for_each_referenced_blob([&](const std::string& sha256) { referenced.insert(sha256); });
  if (!listed.ok()) return answer(call, listed);
  auto stats = blobs(self).collect_garbage([&](const std::string& sha256) { return referenced.count(sha256) > 0; },
                                           self->state.context.options.gc_upload_max_age);
  if (!stats.ok()) return answer(call, stats.status());
  spdlog::info("registry: gc removed {} blobs ({} bytes) and {} stale uploads, kept {}", stats->blobs_removed,
               stats->bytes_freed, stats->uploads_removed, stats->blobs_kept);
  answer(call, Result<msg::GcReply>(msg::GcReply{stats->blobs_removed, stats->bytes_freed, stats->blobs_kept}));
}

// Every artifact must name a blob that is in the store with the stated size.
Status check_artifacts_present(Self self, const std::vector<msg::ArtifactRef>& artifacts) {
  for (size_t i = 0; i < artifacts.size(); ++i) {
    const auto& a = artifacts[i];
    const std::string field = "field \"artifacts[" + std::to_string(i) + "]\" (" + a.path + ")";
    if (!storage::is_sha256_hex(a.sha256)) {
      return Status(Code::bad_request, field + ": sha256 must be 64 lowercase hex characters, got \"" + a.sha256 + "\"");
    }
    auto info = blobs(self).stat(a.sha256);
    if (!info.ok() && info.status().code() == Code::not_found) {
      return Status(Code::bad_request, field + ": blob " + a.sha256 + " is not in the artifact store; upload it first");
    }
    if (!info.ok()) return info.status();
    if (info->size != a.size) {
      return Status(Code::bad_request, field + ": size is " + std::to_string(a.size) + " but blob " + a.sha256 +
                                           " has " + std::to_string(info->size) + " bytes");
    }
  }
  return Status();
}

// ---- the op table ----

struct OpEntry {
  std::string_view name;
  Role min_role;
  bool touches_runs;  // commit staged log_batch requests before serving it
  void (*serve)(Self, const CallPtr&);
};

const std::vector<OpEntry>& op_table() {
  static const std::vector<OpEntry> table = {
      {msg::kCreateExperiment, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::CreateExperimentRequest>(
             call, [&](const auto& r) { return store(self).create_experiment(r, unix_ms()); });
       }},
      {msg::kGetExperiment, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::GetExperimentRequest>(
             call, [&](const auto& r) { return wrap<msg::ExperimentReply>(store(self).get_experiment(r)); });
       }},
      {msg::kSearchExperiments, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::SearchExperimentsRequest>(call, [&](const auto& r) { return store(self).search_experiments(r); });
       }},
      {msg::kDeleteExperiment, Role::client, true,
       [](Self self, const CallPtr& call) {
         serve_with<msg::ExperimentIdRequest>(
             call, [&](const auto& r) { return store(self).delete_experiment(r.experiment_id, unix_ms()); });
       }},
      {msg::kCreateRun, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::CreateRunRequest>(
             call, [&](const auto& r) { return wrap<msg::RunReply>(store(self).create_run(r, unix_ms())); });
       }},
      {msg::kGetRun, Role::client, true,
       [](Self self, const CallPtr& call) {
         serve_with<msg::RunIdRequest>(call,
                                       [&](const auto& r) { return wrap<msg::RunReply>(store(self).get_run(r.run_id)); });
       }},
      {msg::kUpdateRun, Role::client, true,
       [](Self self, const CallPtr& call) {
         serve_with<msg::UpdateRunRequest>(
             call, [&](const auto& r) { return wrap<msg::UpdateRunReply>(store(self).update_run(r, unix_ms())); });
       }},
      {msg::kDeleteRun, Role::client, true,
       [](Self self, const CallPtr& call) {
         serve_with<msg::RunIdRequest>(call, [&](const auto& r) { return store(self).delete_run(r.run_id, unix_ms()); });
       }},
      {msg::kSearchRuns, Role::client, true,
       [](Self self, const CallPtr& call) {
         serve_with<msg::SearchRunsRequest>(call, [&](const auto& r) { return store(self).search_runs(r); });
       }},
      {msg::kLogBatch, Role::client, false, log_batch},
      {msg::kGetMetricHistory, Role::client, true,
       [](Self self, const CallPtr& call) {
         serve_with<msg::GetMetricHistoryRequest>(call,
                                                  [&](const auto& r) { return store(self).get_metric_history(r); });
       }},
      {msg::kCreateModel, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::CreateModelRequest>(
             call, [&](const auto& r) { return wrap<msg::ModelReply>(store(self).create_model(r, unix_ms())); });
       }},
      {msg::kGetModel, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::ModelNameRequest>(
             call, [&](const auto& r) { return wrap<msg::ModelReply>(store(self).get_model(r.name)); });
       }},
      {msg::kUpdateModel, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::UpdateModelRequest>(
             call, [&](const auto& r) { return wrap<msg::ModelReply>(store(self).update_model(r, unix_ms())); });
       }},
      {msg::kDeleteModel, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::ModelNameRequest>(call, [&](const auto& r) { return store(self).delete_model(r.name); });
       }},
      {msg::kSearchModels, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::SearchModelsRequest>(call, [&](const auto& r) { return store(self).search_models(r); });
       }},
      {msg::kCreateVersion, Role::client, true,
       [](Self self, const CallPtr& call) {
         serve_with<msg::CreateVersionRequest>(call, [&](const auto& r) -> Result<msg::VersionReply> {
           CAIRN_RETURN_IF_ERROR(check_artifacts_present(self, r.artifacts));
           return wrap<msg::VersionReply>(store(self).create_version(r, unix_ms()));
         });
       }},
      {msg::kGetVersion, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::GetVersionRequest>(
             call, [&](const auto& r) { return wrap<msg::VersionReply>(store(self).get_version(r)); });
       }},
      {msg::kUpdateVersion, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::UpdateVersionRequest>(
             call, [&](const auto& r) { return wrap<msg::VersionReply>(store(self).update_version(r, unix_ms())); });
       }},
      {msg::kSearchVersions, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::SearchVersionsRequest>(call, [&](const auto& r) { return store(self).search_versions(r); });
       }},
      {msg::kGetLatestVersions, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::ModelNameRequest>(call, [&](const auto& r) { return store(self).get_latest_versions(r.name); });
       }},
      {msg::kSetAlias, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::SetAliasRequest>(call, [&](const auto& r) -> Status {
           auto set = store(self).set_alias(r, who(call), unix_ms());
           return set.ok() ? Status() : set.status();
         });
       }},
      {msg::kDeleteAlias, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::AliasRequest>(call,
                                       [&](const auto& r) { return store(self).delete_alias(r, who(call), unix_ms()); });
       }},
      {msg::kAliasHistory, Role::client, false,
       [](Self self, const CallPtr& call) {
         serve_with<msg::ModelNameRequest>(call, [&](const auto& r) { return store(self).alias_history(r.name); });
       }},
      {msg::kUploadArtifact, Role::client, false, upload_artifact},
      {msg::kDownloadArtifact, Role::client, false, download_artifact},
      {msg::kCollectGarbage, Role::admin, true, collect_garbage},
  };
  return table;
}

const OpEntry* find_op(std::string_view name) {
  static const std::map<std::string_view, const OpEntry*> by_name = [] {
    std::map<std::string_view, const OpEntry*> m;
    for (const auto& entry : op_table()) m.emplace(entry.name, &entry);
    return m;
  }();
  auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : it->second;
}

void serve(Self self, const CallPtr& call) {
  const OpEntry* entry = find_op(call->op());
  if (entry == nullptr) {
    call->fail(Status(Code::unknown_op, "the registry does not serve \"" + call->op() + "\""));
    return;
  }
  // The router checks roles for protocol calls; this covers anything that reaches the actor
  // another way.
  if (call->role() < entry->min_role) {
    call->fail(Status(Code::permission_denied, call->op() + ": needs the " + std::string(role_name(entry->min_role)) +
                                                   " role"));
    return;
  }
  try {
    if (entry->touches_runs) commit_group(self);
    entry->serve(self, call);
  } catch (const std::exception& e) {
    // Exceptions stop here: the caller gets `internal` and the actor keeps serving.
    spdlog::error("registry: {} threw: {}", call->op(), e.what());
    call->fail(Status(Code::internal, call->op() + ": unexpected exception: " + e.what()));
  }
}

// Ends what the actor holds: staged requests are committed (they were accepted before the
// stop), downloads end with shutting_down.
void stop(Self self) {
  commit_group(self);
  for (auto& [id, d] : self->state.downloads) {
    d.call->fail(Status(Code::shutting_down, d.call->op() + ": the registry is stopping"));
  }
  self->state.downloads.clear();
}

caf::behavior registry_actor(Self self, RegistryContext context) {
  self->state.context = context;
  self->set_exit_handler([self](caf::exit_msg& exit) {
    stop(self);
    self->quit(exit.reason);
  });
  return {
      [self](CallMessage& message) { serve(self, message.call); },
      [self](flush_atom) {
        self->state.flush_queued = false;
        commit_group(self);
      },
      [self](download_step_atom, uint64_t id) { download_step(self, id); },
      [self](mailbox_size_atom) { return static_cast<int64_t>(self->mailbox().size()); },
  };
}

}  // namespace

const std::vector<RegistryOp>& registry_ops() {
  static const std::vector<RegistryOp> ops = [] {
    std::vector<RegistryOp> out;
    for (const auto& entry : op_table()) out.push_back({entry.name, entry.min_role});
    return out;
  }();
  return ops;
}

caf::actor spawn_registry(caf::actor_system& system, const RegistryContext& context) {
  return system.spawn(registry_actor, context);
}

}  // namespace cairn
