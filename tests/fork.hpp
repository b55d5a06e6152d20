// SPDX-License-Identifier: BSL-1.0
// Forked children for tests that need several processes: a child runs a body and exits with
// its result, without running the destructors of the parent's objects.
#pragma once

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

namespace keylock::test {

/// Runs `body` (returning an int: 0 = all its checks passed) in a forked child, which exits
/// with that status (99 if it threw) by _exit, so that the parent's objects (servers,
/// deployments) are left alone. The child must not use registries made before the fork: it
/// makes its own.
template <class Body>
pid_t spawn(Body body) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        int status = 99;
        try {
            status = body();
        } catch (...) {
        }
        ::_exit(status);
    }
    return pid;
}

/// Waits for a child; its exit status, or 128 + the signal that ended it, or -1.
inline int wait_exit(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace keylock::test
