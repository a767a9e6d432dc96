// Moving files in and out of a node's artifact store over the protocol (registry.upload_artifact,
// registry.download_artifact): chunked, resumable uploads named by the file's sha256, and
// downloads verified on this side too before they replace anything.
//
//   auto uploaded = cairn::upload_directory(*client, "out/checkpoint-1000");
//   if (!uploaded.ok()) ...;
//   msg::CreateVersionRequest request;  // then name the artifacts in a new version
//   for (const auto& u : *uploaded) request.artifacts.push_back(u.artifact);
//
// Every function blocks the calling thread, which must not be the client's I/O thread (so: not
// from inside a callback of the same client).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cairn/client.h"
#include "runtime/messages/registry.h"
#include "runtime/status.h"

namespace cairn {

// Where a transfer stands; passed to ArtifactTransferOptions::on_progress.
struct TransferProgress {
  std::string path;         // the artifact's path (relative, as in ArtifactRef::path)
  uint64_t bytes_done = 0;  // bytes held by the destination so far (including resumed ones)
  uint64_t bytes_total = 0;
  bool finished = false;    // the last call for this file
};

struct ArtifactTransferOptions {
  // Bytes per upload chunk and per download chunk. Must fit the node's max_frame_bytes (16 MiB by
  // default) with room for the envelope; the node caps download chunks to its own limit.
  // Default 1 MiB.
  uint32_t chunk_bytes = 1u << 20;
  // Upload chunks sent before waiting for the oldest reply. More hides more round trips; each one
  // holds a chunk of memory. Default 4.
  uint32_t upload_window = 4;
  // Deadline of one upload chunk's reply, and the longest a download may go without receiving a
  // chunk. Default 60 s.
  std::chrono::milliseconds timeout{60000};
  // Called after each chunk and once more with finished = true, on the calling thread for uploads
  // and on the client's I/O thread for downloads. May be empty.
  std::function<void(const TransferProgress&)> on_progress;
};

// The sha256 of a file's contents as 64 lowercase hex characters; io_error naming the path.
Result<std::string> sha256_file(const std::string& path);

struct UploadResult {
  msg::ArtifactRef artifact;  // path, sha256 and size, ready for a CreateVersionRequest
  uint64_t bytes_sent = 0;    // 0 when the node already had the blob (deduplicated)
  uint64_t bytes_resumed = 0; // bytes of an earlier, interrupted upload the node kept
};

// Uploads `file` as the artifact named `artifact_path`. Hashes the file first, then asks the node
// what it holds for that hash (an empty chunk): nothing is sent when the blob is already there,
// and an interrupted upload continues where the node's copy ends. Clients uploading the same
// content at once do not fail each other: a client whose chunk lands out of place asks again and
// continues (or finds the blob complete). Fails with the node's error, or io_error when the file
// cannot be read, or data_loss when the file changed while it was read.
Result<UploadResult> upload_artifact(Client& client, const std::string& file, const std::string& artifact_path,
                                     const ArtifactTransferOptions& options = {});

// Uploads every regular file under `dir` (recursively, following no symlinks to directories),
// each named by its path relative to `dir` with "/" separators, in path order. Stops at the first
// failure; files uploaded before it stay on the node (a retry skips them).
Result<std::vector<UploadResult>> upload_directory(Client& client, const std::string& dir,
                                                   const ArtifactTransferOptions& options = {});

// Streams the blob of `artifact` into `dest_file`: into a temporary file beside it, checking size
// and sha256 as the bytes arrive, then fsync and rename, so `dest_file` is either the complete,
// verified file or untouched. Creates missing parent directories. Fails with the node's error
// (not_found, data_loss for a corrupt blob), data_loss when the bytes do not match
// `artifact.sha256`, timeout when no chunk arrives within options.timeout, io_error for local files.
Status download_artifact(Client& client, const msg::ArtifactRef& artifact, const std::string& dest_file,
                         const ArtifactTransferOptions& options = {});

// Downloads every artifact into `dir`, each at dir/<artifact.path>. Refuses (invalid_argument)
// artifact paths that are absolute or climb out of `dir` with "..", before anything is written.
Status download_artifacts(Client& client, const std::vector<msg::ArtifactRef>& artifacts, const std::string& dir,
                          const ArtifactTransferOptions& options = {});

}  // namespace cairn
