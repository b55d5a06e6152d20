// SPDX-License-Identifier: BSL-1.0
// bench/cpu_caps.hpp — CPU accounting from /proc and cgroup v1 CPU caps per redis-server, for
// bench_topology's cluster figures (what each server, this process and the machine used, and the
// capped variants where the servers are the bottleneck).
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace keylock::bench {

// ---- CPU accounting ------------------------------------------------------------------------

/// utime + stime of process `pid` (all its threads) in seconds, from /proc/PID/stat; 0 if gone.
inline double process_cpu(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto paren = text.rfind(')');  // the command name may contain spaces
    if (paren == std::string::npos) return 0;
    std::istringstream rest(text.substr(paren + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    // Fields 3 (state) to 13 come before utime (14) and stime (15).
    for (int i = 3; i <= 13 && rest >> field; ++i) {
    }
    rest >> utime >> stime;
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

/// CPU seconds all CPUs spent busy (steal included), from /proc/stat.
inline double system_busy() {
    std::ifstream in("/proc/stat");
    std::string cpu;
    unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
    return static_cast<double>(user + nice + system + irq + softirq + steal) /
           static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// ---- cgroup v1 CPU caps --------------------------------------------------------------------

/// One cgroup v1 `cpu` group per server (/sys/fs/cgroup/cpu/keylock-bench-<our pid>-<i>), each
/// server moved into its own; cap() sets every group's quota. The destructor moves the servers
/// back to where they were and removes the groups (also when unwinding). Groups left behind by
/// a run that was killed (its pid gone) are removed at the next start.
class CpuCaps {
public:
    static constexpr const char* root = "/sys/fs/cgroup/cpu";

    CpuCaps(const std::vector<pid_t>& pids, int period_us) : period_us_(period_us) {
        remove_stale();
        if (::access((std::string(root) + "/cpu.cfs_quota_us").c_str(), F_OK) != 0) {
            why_ = std::string(root) + "/cpu.cfs_quota_us does not exist (no cgroup v1 cpu controller)";
            return;
        }
        for (std::size_t i = 0; i < pids.size(); ++i) {
            const std::string dir =
                std::string(root) + "/keylock-bench-" + std::to_string(::getpid()) + "-" + std::to_string(i);
            if (::mkdir(dir.c_str(), 0755) != 0) {
                why_ = "cannot create " + dir + ": " + std::strerror(errno);
                undo();
                return;
            }
            groups_.push_back(Group{dir, pids[i], origin(pids[i])});
            if (!write(dir + "/cpu.cfs_period_us", std::to_string(period_us)) ||
                !write(dir + "/cpu.cfs_quota_us", "-1") || !write(dir + "/cgroup.procs", std::to_string(pids[i]))) {
                undo();
                return;
            }
        }
        ok_ = true;
    }
    CpuCaps(const CpuCaps&) = delete;
    CpuCaps& operator=(const CpuCaps&) = delete;
    ~CpuCaps() { undo(); }

    bool ok() const noexcept { return ok_; }
    /// Why the caps cannot be had (when !ok()).
    const std::string& why() const noexcept { return why_; }

    /// Each server may use `percent` % of one core (0: no cap).
    bool cap(int percent) {
        bool all = true;
        for (const auto& g : groups_) {
            const std::string quota =
                percent > 0 ? std::to_string(static_cast<long>(period_us_) * percent / 100) : "-1";
            all = write(g.dir + "/cpu.cfs_quota_us", quota) && all;
        }
        return all;
    }
    /// Periods in which some group was throttled, summed over the groups (cpu.stat nr_throttled).
    long throttled_periods() const {
        long total = 0;
        for (const auto& g : groups_) {
            std::ifstream in(g.dir + "/cpu.stat");
            std::string name;
            long value = 0;
            while (in >> name >> value) {
                if (name == "nr_throttled") total += value;
            }
        }
        return total;
    }

private:
    struct Group {
        std::string dir;
        pid_t pid;
        std::string origin;  // the cpu group it came from, relative to root ("/" usually)
    };

    bool write(const std::string& path, const std::string& value) {
        std::ofstream out(path);
        out << value << std::flush;
        if (!out) {
            why_ = "cannot write " + value + " to " + path + ": " + std::strerror(errno);
            return false;
        }
        return true;
    }

    /// The `cpu` cgroup `pid` is in, from /proc/PID/cgroup ("/" if not found).
    static std::string origin(pid_t pid) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
        for (std::string line; std::getline(in, line);) {
            const auto a = line.find(':'), b = line.find(':', a + 1);
            if (a == std::string::npos || b == std::string::npos) continue;
            std::string controllers = "," + line.substr(a + 1, b - a - 1) + ",";
            if (controllers.find(",cpu,") != std::string::npos) return line.substr(b + 1);
        }
        return "/";
    }

    void undo() noexcept {
        try {
            for (const auto& g : groups_) {
                std::ofstream back(std::string(root) + (g.origin == "/" ? "" : g.origin) + "/cgroup.procs");
                back << g.pid << std::flush;  // fails harmlessly if the server is gone
            }
        } catch (...) {
        }
        for (const auto& g : groups_) ::rmdir(g.dir.c_str());
        groups_.clear();
        ok_ = false;
    }

    /// Removes keylock-bench-<pid>-<i> groups whose benchmark process is gone (its servers died
    /// with it, so the groups are empty).
    static void remove_stale() {
        DIR* d = ::opendir(root);
        if (d == nullptr) return;
        while (const dirent* e = ::readdir(d)) {
            const std::string name = e->d_name;
            if (name.rfind("keylock-bench-", 0) != 0) continue;
            const long pid = std::atol(name.c_str() + 14);
            if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
                ::rmdir((std::string(root) + "/" + name).c_str());
            }
        }
        ::closedir(d);
    }

    std::vector<Group> groups_;
    int period_us_;
    bool ok_ = false;
    std::string why_;
};

}  // namespace keylock::bench
