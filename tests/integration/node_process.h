// Test harness: runs a real `cairn node` process (CAIRN_BINARY) in a fresh temporary directory.
//
//   auto node = NodeProcess::start({});
//   ASSERT_TRUE(node.ok()) << node.status().to_string();
//   auto client = Client::connect((*node)->client_options(Role::admin));
//
// The node listens on 127.0.0.1 port 0 (protocol and HTTP), keeps its data under the temporary
// directory, and reads a token file the harness writes with one admin and one client token. Its
// stdout is a pipe the harness reads the ready line from; its stderr goes to a file, for checks and
// for diagnostics in failure messages. Every wait takes a deadline and waits on an event (poll on
// the pipe or on a pidfd): nothing here sleeps.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cairn/client.h"
#include "runtime/status.h"

namespace cairn::testing {

// Milliseconds left until `deadline`, clamped to what poll() takes.
int remaining_ms(std::chrono::steady_clock::time_point deadline);
// poll() on one descriptor until `events` (POLLERR and POLLHUP always count) or the deadline;
// restarts after EINTR. Returns the revents, 0 on timeout, -1 on error.
int poll_one(int fd, short events, std::chrono::steady_clock::time_point deadline);

// How long a node may take to print its ready line: RocksDB, CAF and the listeners start first.
inline constexpr std::chrono::milliseconds kNodeReadyTimeout{15000};
// How long a node may take to exit after a signal or an escalation.
inline constexpr std::chrono::milliseconds kNodeExitTimeout{15000};

// A fresh directory (mkdtemp under the system temp dir), removed with its contents when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // Empty when mkdtemp failed.
  const std::string& path() const { return path_; }
  std::string path(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes `text` to `path` (replacing it); fails with io_error naming the path.
Status write_file(const std::string& path, const std::string& text);
// The file's contents, or "" when it cannot be read.
std::string read_file(const std::string& path);

// A spawned child process, reaped at the latest in the destructor (SIGKILL first if still running).
// Exit is observed through a pidfd, so waiting is an event wait, not a polling loop.
class ChildProcess {
 public:
  struct Spec {
    std::vector<std::string> argv;  // argv[0] is the program path
    std::string stderr_path;        // where stderr goes ("" = inherit)
    std::string stdout_path;        // where stdout goes when !pipe_stdout ("" = inherit)
    bool pipe_stdout = false;       // stdout is a pipe read with read_line()
  };
  // Spawns with posix_spawn. The child gets this environment minus every CAIRN_* variable (so the
  // runner's environment cannot change the node's config) and default signal handling.
  static Result<std::unique_ptr<ChildProcess>> spawn(const Spec& spec);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Sends `sig`; false when the process is already reaped or kill() fails.
  bool signal(int sig);
  // Waits for the exit and reaps it. Returns the exit status, 128 + N for death by signal N, or
  // nullopt when the process is still running after `timeout`. Once reaped, returns the same value.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  // Reads one line from the stdout pipe (without the newline). Fails with `timeout`, or with
  // `unavailable` at end of file (the process closed stdout, normally by exiting).
  Result<std::string> read_line(std::chrono::milliseconds timeout);

 private:
  ChildProcess() = default;
  // Waits until the process has exited (not reaped); false on timeout.
  bool wait_exited(std::chrono::milliseconds timeout);

  pid_t pid_ = -1;
  int pidfd_ = -1;       // -1 when pidfd_open is not available: then stdout EOF + waitpid
  int stdout_fd_ = -1;   // read end of the stdout pipe, or -1
  bool stdout_eof_ = false;
  std::string stdout_buffer_;
  std::optional<int> exit_code_;
};

// Runs a program to completion with stdout and stderr in `output_path`; returns its exit code, or
// `timeout` (the program is killed) or the spawn error.
Result<int> run_program(const std::vector<std::string>& argv, const std::string& output_path,
                        std::chrono::milliseconds timeout);

struct NodeOptions {
  // YAML config; when not empty it is written to <dir>/node.yaml and passed with --config.
  std::string config_yaml;
  // --listen; port 0 picks a free port (a test that restarts on the same port passes it here).
  std::string listen = "127.0.0.1:0";
  // --http; "off" disables HTTP.
  std::string http = "127.0.0.1:0";
  // --data-dir; "" = <dir>/data. Two nodes share state by passing the same directory.
  std::string data_dir;
  // Tokens written to the token file; "" = a fresh random token. A node restarted for a client
  // that must reconnect is given the first node's tokens.
  std::string admin_token;
  std::string client_token;
  // Extra command-line arguments after the standard ones.
  std::vector<std::string> extra_args;
};

class NodeProcess {
 public:
  // Spawns the node without waiting for it: for a node that is expected to fail at start.
  static Result<std::unique_ptr<NodeProcess>> spawn(const NodeOptions& options);
  // Spawns the node and waits for its ready line; on failure the status carries the node's exit
  // code and stderr.
  static Result<std::unique_ptr<NodeProcess>> start(const NodeOptions& options,
                                                    std::chrono::milliseconds ready_timeout = kNodeReadyTimeout);
  // Kills the node (SIGKILL) if it still runs, reaps it and removes its directory.
  ~NodeProcess();
  NodeProcess(const NodeProcess&) = delete;
  NodeProcess& operator=(const NodeProcess&) = delete;

  // Reads stdout until the line "cairn node ready protocol=HOST:PORT http=HOST:PORT pid=N".
  Status wait_ready(std::chrono::milliseconds timeout);

  // From the ready line.
  const std::string& address() const { return address_; }            // "127.0.0.1:PORT"
  uint16_t port() const { return port_; }
  const std::string& http_address() const { return http_address_; }  // "" when HTTP is off
  uint16_t http_port() const { return http_port_; }
  pid_t pid() const { return child_->pid(); }
  // The whole ready line (it may carry more fields, such as models=NAME:STATE,...).
  const std::string& ready_line() const { return ready_line_; }

  const std::string& admin_token() const { return admin_token_; }
  const std::string& client_token() const { return client_token_; }
  const std::string& dir() const { return dir_->path(); }
  const std::string& data_dir() const { return data_dir_; }

  // Client options for this node with the token of `role` (Role::none: no token), no reconnect,
  // and short timeouts suited to tests.
  ClientOptions client_options(Role role) const;

  bool signal(int sig) { return child_->signal(sig); }
  // See ChildProcess::wait_exit.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout = kNodeExitTimeout) {
    return child_->wait_exit(timeout);
  }
  // Everything the node wrote to stderr so far (its log).
  std::string stderr_text() const;
  // The last lines of stderr, for failure messages.
  std::string diagnostics() const;

 private:
  NodeProcess() = default;

  std::unique_ptr<TempDir> dir_;
  std::string data_dir_;
  std::string stderr_path_;
  std::string admin_token_;
  std::string client_token_;
  std::unique_ptr<ChildProcess> child_;
  std::string ready_line_;
  std::string address_;
  uint16_t port_ = 0;
  std::string http_address_;
  uint16_t http_port_ = 0;
};

}  // namespace cairn::testing
