// SPDX-License-Identifier: BSL-1.0
// Runs the `keylock` command (KEYLOCK_CLI_PATH, set by CMake) from tests, with stdout and
// stderr captured together.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// POSIX declares environ in no header (glibc does in <unistd.h>, with _GNU_SOURCE only).
extern char** environ;  // NOLINT(readability-redundant-declaration): see above

namespace keylock::test {

/// One run of the keylock command: start it, optionally signal it, then wait for it.
class Cli {
public:
    /// Starts `keylock args...`; `env` entries ("NAME=value") are added to the environment.
    explicit Cli(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
        std::vector<std::string> argv_s{KEYLOCK_CLI_PATH};
        argv_s.insert(argv_s.end(), args.begin(), args.end());
        std::vector<char*> argv;
        for (auto& a : argv_s) argv.push_back(a.data());
        argv.push_back(nullptr);
        std::vector<std::string> env_s;
        for (char** e = environ; *e != nullptr; ++e) {
            if (std::strncmp(*e, "KEYLOCK_URL=", 12) != 0) env_s.emplace_back(*e);  // tests say what they mean
        }
        env_s.insert(env_s.end(), env.begin(), env.end());
        std::vector<char*> envp;
        for (auto& e : env_s) envp.push_back(e.data());
        envp.push_back(nullptr);

        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
        const int rc = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        ::close(fds[1]);
        if (rc != 0) {
            ::close(fds[0]);
            throw std::runtime_error(std::string("cannot run " KEYLOCK_CLI_PATH ": ") + std::strerror(rc));
        }
        out_ = fds[0];
    }
    Cli(const Cli&) = delete;
    Cli& operator=(const Cli&) = delete;
    ~Cli() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
        if (out_ >= 0) ::close(out_);
    }

    pid_t pid() const noexcept { return pid_; }
    void signal(int sig) const noexcept { ::kill(pid_, sig); }

    /// Waits for the command to end; returns its exit status (128+N if signal N ended it).
    int wait() {
        char buf[4096];
        for (ssize_t n; (n = ::read(out_, buf, sizeof buf)) != 0;) {
            if (n > 0) output_.append(buf, static_cast<std::size_t>(n));
            else if (errno != EINTR) break;
        }
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    /// What it printed (after wait()).
    const std::string& output() const noexcept { return output_; }

private:
    pid_t pid_ = -1;
    int out_ = -1;
    std::string output_;
};

/// Runs `keylock args...` to the end: {exit status, stdout and stderr}.
inline std::pair<int, std::string> run_cli(const std::vector<std::string>& args,
                                           const std::vector<std::string>& env = {}) {
    Cli cli(args, env);
    const int status = cli.wait();
    return {status, cli.output()};
}

}  // namespace keylock::test
