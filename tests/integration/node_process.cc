#include "node_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

extern char** environ;

namespace cairn::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string errno_text(const std::string& what, int err) { return what + ": " + std::strerror(err); }

std::string random_token() {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 40; ++i) out.push_back(kHex[rd() & 0xf]);
  return out;
}

// The environment for children: ours without CAIRN_* (which the node reads as config overrides).
std::vector<std::string> child_environment() {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (std::strncmp(*e, "CAIRN_", 6) != 0) env.emplace_back(*e);
  }
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Owns the posix_spawn attribute and file-action objects.
struct SpawnSetup {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  SpawnSetup() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;
};

// "cairn node ready protocol=HOST:PORT http=HOST:PORT pid=N [tls=on] [models=NAME:STATE,...]": the
// value of `key=`.
std::optional<std::string> ready_field(const std::string& line, const std::string& key) {
  std::istringstream words(line);
  std::string word;
  while (words >> word) {
    if (word.rfind(key + "=", 0) == 0) return word.substr(key.size() + 1);
  }
  return std::nullopt;
}

std::optional<uint16_t> port_of(const std::string& host_port) {
  auto colon = host_port.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  try {
    int port = std::stoi(host_port.substr(colon + 1));
    if (port <= 0 || port > 65535) return std::nullopt;
    return static_cast<uint16_t>(port);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

// Milliseconds left until `deadline`, clamped to what poll() takes.
int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 60'000 ? 60'000 : static_cast<int>(left);
}

// poll() on one descriptor until `events` or the deadline; restarts after EINTR. Returns the
// revents, 0 on timeout, -1 on error.
int poll_one(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, remaining_ms(deadline));
    if (n > 0) return p.revents;
    if (n == 0) {
      if (Clock::now() >= deadline) return 0;
      continue;
    }
    if (errno != EINTR) return -1;
  }
}

// ---- TempDir ----

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "cairn-it-XXXXXX").string();
  if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Status write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return Status(Code::io_error, path + ": cannot write");
  return {};
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// ---- ChildProcess ----

Result<std::unique_ptr<ChildProcess>> ChildProcess::spawn(const Spec& spec) {
  if (spec.argv.empty()) return Status(Code::invalid_argument, "spawn: empty argv");
  SpawnSetup setup;
  int pipe_fds[2] = {-1, -1};
  if (spec.pipe_stdout) {
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Status(Code::io_error, errno_text("pipe2", errno));
    posix_spawn_file_actions_adddup2(&setup.actions, pipe_fds[1], STDOUT_FILENO);
  } else if (!spec.stdout_path.empty()) {
    posix_spawn_file_actions_addopen(&setup.actions, STDOUT_FILENO, spec.stdout_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
  }
  posix_spawn_file_actions_addopen(&setup.actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (!spec.stderr_path.empty()) {
    if (spec.stderr_path == spec.stdout_path && !spec.pipe_stdout) {
      posix_spawn_file_actions_adddup2(&setup.actions, STDOUT_FILENO, STDERR_FILENO);
    } else {
      posix_spawn_file_actions_addopen(&setup.actions, STDERR_FILENO, spec.stderr_path.c_str(),
                                       O_WRONLY | O_CREAT | O_TRUNC, 0644);
    }
  }
  // A runner that ignores SIGINT or SIGPIPE (a background job does) must not pass that on.
  sigset_t empty_mask, defaults;
  sigemptyset(&empty_mask);
  sigemptyset(&defaults);
  for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&setup.attr, &empty_mask);
  posix_spawnattr_setsigdefault(&setup.attr, &defaults);
  posix_spawnattr_setflags(&setup.attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<std::string> argv_strings = spec.argv;
  std::vector<std::string> env_strings = child_environment();
  auto argv = c_strings(argv_strings);
  auto envp = c_strings(env_strings);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0], &setup.actions, &setup.attr, argv.data(), envp.data());
  if (spec.pipe_stdout) ::close(pipe_fds[1]);
  if (rc != 0) {
    if (spec.pipe_stdout) ::close(pipe_fds[0]);
    return Status(Code::io_error, errno_text("posix_spawn " + spec.argv[0], rc));
  }
  std::unique_ptr<ChildProcess> child(new ChildProcess());
  child->pid_ = pid;
  child->stdout_fd_ = spec.pipe_stdout ? pipe_fds[0] : -1;
  child->pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  return child;
}

ChildProcess::~ChildProcess() {
  if (!exit_code_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    if (!wait_exit(kNodeExitTimeout)) {
      int status = 0;
      ::waitpid(pid_, &status, 0);  // SIGKILL cannot be refused: this returns
    }
  }
  if (pidfd_ >= 0) ::close(pidfd_);
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
}

bool ChildProcess::signal(int sig) {
  if (exit_code_ || pid_ <= 0) return false;
  return ::kill(pid_, sig) == 0;
}

bool ChildProcess::wait_exited(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  if (pidfd_ >= 0) return poll_one(pidfd_, POLLIN, deadline) > 0;
  // No pidfd: the process's stdout closes when it exits; then reap with a bounded WNOHANG loop.
  if (stdout_fd_ >= 0) {
    while (!stdout_eof_) {
      auto line = read_line(std::chrono::milliseconds(remaining_ms(deadline)));
      if (!line.ok() && line.status().code() == Code::timeout) return false;
    }
  }
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return true;
    }
    if (Clock::now() >= deadline) return false;
    ::poll(nullptr, 0, 5);  // process reaping only: the exit itself was already observed, or no pidfd
  }
}

std::optional<int> ChildProcess::wait_exit(std::chrono::milliseconds timeout) {
  if (exit_code_) return exit_code_;
  if (!wait_exited(timeout)) return std::nullopt;
  if (exit_code_) return exit_code_;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);  // the process has exited: this does not block
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return std::nullopt;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return exit_code_;
}

Result<std::string> ChildProcess::read_line(std::chrono::milliseconds timeout) {
  if (stdout_fd_ < 0) return Status(Code::invalid_argument, "stdout is not a pipe");
  const auto deadline = Clock::now() + timeout;
  while (true) {
    auto newline = stdout_buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = stdout_buffer_.substr(0, newline);
      stdout_buffer_.erase(0, newline + 1);
      return line;
    }
    if (stdout_eof_) return Status(Code::unavailable, "stdout closed");
    int revents = poll_one(stdout_fd_, POLLIN, deadline);
    if (revents == 0) return Status(Code::timeout, "no line on stdout in time");
    if (revents < 0) return Status(Code::io_error, errno_text("poll", errno));
    char chunk[4096];
    ssize_t n = ::read(stdout_fd_, chunk, sizeof chunk);
    if (n > 0) {
      stdout_buffer_.append(chunk, static_cast<size_t>(n));
    } else if (n == 0) {
      stdout_eof_ = true;
    } else if (errno != EINTR && errno != EAGAIN) {
      return Status(Code::io_error, errno_text("read", errno));
    }
  }
}

Result<int> run_program(const std::vector<std::string>& argv, const std::string& output_path,
                        std::chrono::milliseconds timeout) {
  ChildProcess::Spec spec;
  spec.argv = argv;
  spec.stdout_path = output_path;
  spec.stderr_path = output_path;
  auto child = ChildProcess::spawn(spec);
  if (!child.ok()) return child.status();
  auto code = (*child)->wait_exit(timeout);
  if (!code) return Status(Code::timeout, argv[0] + " did not finish in time");
  return *code;
}

// ---- NodeProcess ----

Result<std::unique_ptr<NodeProcess>> NodeProcess::spawn(const NodeOptions& options) {
  std::unique_ptr<NodeProcess> node(new NodeProcess());
  node->dir_ = std::make_unique<TempDir>();
  if (node->dir().empty()) return Status(Code::io_error, errno_text("mkdtemp", errno));
  node->data_dir_ = options.data_dir.empty() ? node->dir_->path("data") : options.data_dir;
  node->stderr_path_ = node->dir_->path("node.stderr");
  node->admin_token_ = options.admin_token.empty() ? random_token() : options.admin_token;
  node->client_token_ = options.client_token.empty() ? random_token() : options.client_token;

  const std::string token_file = node->dir_->path("tokens");
  CAIRN_RETURN_IF_ERROR(write_file(token_file, "# written by the integration test harness\nadmin " +
                                                   node->admin_token_ + "\nclient " + node->client_token_ + "\n"));
  ChildProcess::Spec spec;
  spec.argv = {CAIRN_BINARY, "node"};
  if (!options.config_yaml.empty()) {
    const std::string config_file = node->dir_->path("node.yaml");
    CAIRN_RETURN_IF_ERROR(write_file(config_file, options.config_yaml));
    spec.argv.insert(spec.argv.end(), {"--config", config_file});
  }
  spec.argv.insert(spec.argv.end(), {"--listen", options.listen, "--http", options.http, "--data-dir",
                                     node->data_dir_, "--token-file", token_file});
  spec.argv.insert(spec.argv.end(), options.extra_args.begin(), options.extra_args.end());
  spec.stderr_path = node->stderr_path_;
  spec.pipe_stdout = true;
  auto child = ChildProcess::spawn(spec);
  if (!child.ok()) return child.status();
  node->child_ = std::move(child).value();
  return node;
}

Result<std::unique_ptr<NodeProcess>> NodeProcess::start(const NodeOptions& options,
                                                        std::chrono::milliseconds ready_timeout) {
  auto node = spawn(options);
  if (!node.ok()) return node.status();
  Status ready = (*node)->wait_ready(ready_timeout);
  if (!ready.ok()) return ready;
  return node;
}

NodeProcess::~NodeProcess() {
  child_.reset();  // kills and reaps before the directory goes
  dir_.reset();
}

Status NodeProcess::wait_ready(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    auto line = child_->read_line(std::chrono::milliseconds(remaining_ms(deadline)));
    if (!line.ok()) {
      std::string why = line.status().code() == Code::timeout ? "no ready line within " +
                                                                    std::to_string(timeout.count()) + " ms"
                                                              : "the node closed stdout before its ready line";
      if (auto code = child_->wait_exit(std::chrono::milliseconds(line.status().code() == Code::timeout ? 0 : 5000))) {
        why += " (exit code " + std::to_string(*code) + ")";
      }
      return Status(Code::unavailable, why + "\n" + diagnostics());
    }
    if (line->rfind("cairn node ready ", 0) != 0) continue;
    auto protocol = ready_field(*line, "protocol");
    auto http = ready_field(*line, "http");
    auto protocol_port = protocol ? port_of(*protocol) : std::nullopt;
    if (!protocol_port || !http) return Status(Code::internal, "cannot parse the ready line: " + *line);
    ready_line_ = *line;
    address_ = *protocol;
    port_ = *protocol_port;
    if (*http != "off") {
      auto http_port = port_of(*http);
      if (!http_port) return Status(Code::internal, "cannot parse http= in the ready line: " + *line);
      http_address_ = *http;
      http_port_ = *http_port;
    }
    return {};
  }
}

ClientOptions NodeProcess::client_options(Role role) const {
  ClientOptions options;
  options.address = address_;
  options.token = role == Role::admin ? admin_token_ : role == Role::client ? client_token_ : "";
  options.reconnect = false;
  options.connect_timeout = std::chrono::milliseconds(5000);
  options.call_timeout = std::chrono::milliseconds(10000);
  options.client_name = "cairn-integration-test";
  return options;
}

std::string NodeProcess::stderr_text() const { return read_file(stderr_path_); }

std::string NodeProcess::diagnostics() const {
  constexpr size_t kTailLines = 40;
  std::string text = stderr_text();
  size_t start = text.size();
  for (size_t lines = 0; start > 0 && lines <= kTailLines;) {
    --start;
    if (text[start] == '\n') ++lines;
  }
  return "--- node stderr (" + stderr_path_ + ", last lines) ---\n" + text.substr(start) + "--- end ---";
}

}  // namespace cairn::testing
