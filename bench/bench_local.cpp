// SPDX-License-Identifier: BSL-1.0
// bench_local — throughput of the local backend, as ratios against baselines measured in the
// same run. See docs/benchmarks.md for what is measured, why, and the results.
//
//   keylock_bench_local            full run (5 rounds of 0.3 s per measurement)
//   keylock_bench_local --quick    smoke run (1 round of 20 ms), for CI: checks it runs
//   options: --rounds N  --ms N  (rounds per measurement, milliseconds per measurement)
//            --only ID[,ID...] --threads N   run only these contenders / this thread count (for
//            profiling one case; ratios and targets needing the others print as n/a)
//   IDs: keylock keylock_ttl global map striped shared striped_shared hot_keylock hot_handle hot_mutex
//
// The machine this runs on is assumed noisy (shared cores, builds running alongside), so:
//   * every contender is measured in every round, contenders interleaved (the order rotates
//     each round), so a burst of outside load hits all of them alike;
//   * a figure is the median over the rounds, and a ratio is the median over the rounds of the
//     ratio of the two measurements taken in the same round (seconds apart);
//   * keys and the random index sequence are made before any timing: the timed loop is two
//     array reads (index, then key), a lock and an unlock.
// Targets are printed as PASS/FAIL; the exit status is 0 whatever the numbers are.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <keylock/keylock.hpp>

namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr std::size_t kKeys = 100'000;
constexpr std::size_t kSeqBits = 20;  // 1 Mi pre-drawn key indices, shared by all threads
constexpr std::size_t kSeqMask = (std::size_t{1} << kSeqBits) - 1;
constexpr std::size_t kStripes = 1024;
constexpr int kBatch = 64;  // operations between two looks at the stop flag

struct Workload {
    std::vector<std::string> keys;
    std::vector<std::uint32_t> seq;
    std::string hot = "client-hot";
};

// ---------------------------------------------------------------------------------------------
// The timing harness: `threads` workers run `op(thread, key)` back to back until told to stop.
// Threads are started and parked before the clock starts; the figure is all workers'
// operations divided by the time from "go" to the last worker's stop.

struct Sample {
    double ops_per_sec = 0;
};

template <class Op>
Sample run_threads(int threads, std::chrono::milliseconds duration, const Workload& w, bool hot, Op& op) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::atomic<bool> stop{false};
    std::vector<std::uint64_t> counts(static_cast<std::size_t>(threads), 0);
    std::vector<SteadyClock::time_point> ends(static_cast<std::size_t>(threads));
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(threads));
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t, hot] {
            const std::string* keys = w.keys.data();
            const std::uint32_t* seq = w.seq.data();
            // Each worker walks the shared sequence from its own offset.
            std::size_t pos = (static_cast<std::size_t>(t) * 0x5A5A5u + 12345u) & kSeqMask;
            std::uint64_t n = 0;
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            while (!stop.load(std::memory_order_relaxed)) {
                for (int i = 0; i < kBatch; ++i) {
                    const std::string& key = hot ? w.hot : keys[seq[pos]];
                    pos = (pos + 1) & kSeqMask;
                    op(t, key);
                }
                n += kBatch;
            }
            ends[static_cast<std::size_t>(t)] = SteadyClock::now();
            counts[static_cast<std::size_t>(t)] = n;
        });
    }
    while (ready.load() != threads) std::this_thread::yield();
    const auto start = SteadyClock::now();
    go.store(true, std::memory_order_release);
    std::this_thread::sleep_for(duration);
    stop.store(true, std::memory_order_relaxed);
    for (auto& th : pool) th.join();
    const auto end = *std::max_element(ends.begin(), ends.end());
    std::uint64_t total = 0;
    for (auto c : counts) total += c;
    const double secs = std::chrono::duration<double>(end - start).count();
    return {static_cast<double>(total) / secs};
}

// ---------------------------------------------------------------------------------------------
// Contenders. Each is an object with `void operator()(int thread, const std::string& key)`
// doing one lock + unlock; nothing happens inside the critical section.

struct KeylockOp {
    keylock::KeyedLockRegistry& reg;
    void operator()(int, const std::string& key) {
        keylock::Guard g = reg.lock(key);  // released by the destructor
    }
};

// keylock through a KeyMutex handle from obtain(): the entry is pinned, so lock() skips the
// hashing and the lookup, and the entry is never freed in between. One handle per thread.
struct KeyMutexOp {
    std::vector<keylock::KeyMutex>& handles;
    void operator()(int thread, const std::string&) {
        auto& h = handles[static_cast<std::size_t>(thread)];
        h.lock();
        h.unlock();
    }
};

// (a) One mutex for everything: the simplest correct answer, and no parallelism at all.
struct GlobalMutexOp {
    std::mutex& mu;
    void operator()(int, const std::string&) {
        mu.lock();
        mu.unlock();
    }
};

// (b) The usual hand-written per-key lock: a map of mutexes behind a global mutex, never
// freed (it grows with every key ever seen). The global mutex is held for the lookup only.
struct MapOfMutexes {
    std::mutex global;
    std::unordered_map<std::string, std::mutex> map;
};
struct MapOfMutexesOp {
    MapOfMutexes& m;
    void operator()(int, const std::string& key) {
        std::mutex* mu;
        {
            std::lock_guard lk(m.global);
            auto it = m.map.find(key);
            if (it == m.map.end()) it = m.map.try_emplace(key).first;
            mu = &it->second;
        }
        mu->lock();
        mu->unlock();
    }
};

// (c) Lock striping: a fixed array of mutexes, the key's hash picks one. Fast and fixed-size,
// but unrelated keys that share a stripe wait for each other (and a thread holding two keys
// of one stripe deadlocks), which is what keylock exists to avoid.
struct StripedOp {
    std::array<std::mutex, kStripes>& stripes;
    void operator()(int, const std::string& key) {
        std::mutex& mu = stripes[std::hash<std::string>{}(key) & (kStripes - 1)];
        mu.lock();
        mu.unlock();
    }
};

// keylock shared ownership (lock_shared), for the shared-lock target.
struct KeylockSharedOp {
    keylock::KeyedLockRegistry& reg;
    void operator()(int, const std::string& key) { keylock::Guard g = reg.lock_shared(key); }
};

// (d) The shared-lock baseline: 1024 striped std::shared_mutex, each taken shared.
struct StripedSharedOp {
    std::array<std::shared_mutex, kStripes>& stripes;
    void operator()(int, const std::string& key) {
        std::shared_mutex& mu = stripes[std::hash<std::string>{}(key) & (kStripes - 1)];
        mu.lock_shared();
        mu.unlock_shared();
    }
};

// (hot) A bare std::mutex, for the one-hot-key case.
using BareMutexOp = GlobalMutexOp;

// ---------------------------------------------------------------------------------------------

struct Measurement {
    std::string id;     // short name, used to pair measurements for ratios
    std::string label;  // row label in the table
    int threads = 1;
    std::function<Sample(std::chrono::milliseconds)> run;
    std::vector<double> samples;  // ops/s, one per round
};

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string read_cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            auto colon = line.find(':');
            if (colon != std::string::npos) {
                auto s = line.substr(colon + 1);
                s.erase(0, s.find_first_not_of(" \t"));
                return s;
            }
        }
    }
    return "unknown";
}

std::string read_loadavg() {
    std::ifstream in("/proc/loadavg");
    std::string a, b, c;
    in >> a >> b >> c;
    return a + " " + b + " " + c;
}

int usable_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    return static_cast<int>(std::thread::hardware_concurrency());
}

// How busy the machine was apart from us: CPU time the whole system used (/proc/stat, steal
// included) minus what this process used (getrusage), as a share of all CPUs over wall time.
// A clean measurement has this near 0%; builds running alongside show up as tens of percent.
struct CpuSnap {
    double system_busy = 0;  // seconds, all CPUs
    double self = 0;         // seconds, this process
    SteadyClock::time_point when;
};

CpuSnap cpu_snap() {
    CpuSnap snap;
    snap.when = SteadyClock::now();
    std::ifstream in("/proc/stat");
    std::string cpu;
    unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
    const auto tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    snap.system_busy = static_cast<double>(user + nice + system + irq + softirq + steal) / tick;
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    auto secs = [](const timeval& tv) {
        return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
    };
    snap.self = secs(ru.ru_utime) + secs(ru.ru_stime);
    return snap;
}

double others_share(const CpuSnap& a, const CpuSnap& b, int cpus) {
    const double wall = std::chrono::duration<double>(b.when - a.when).count();
    if (wall <= 0 || cpus <= 0) return 0;
    const double others = (b.system_busy - a.system_busy) - (b.self - a.self);
    return std::clamp(others / (wall * cpus), 0.0, 1.0);
}

void usage(const char* argv0) {
    std::fprintf(stderr, "usage: %s [--quick] [--rounds N] [--ms N] [--only ID,...] [--threads N]\n", argv0);
}

}  // namespace

int main(int argc, char** argv) {
    int rounds = 5;
    int ms = 300;
    bool quick = false;
    std::string only;      // comma-separated contender ids; empty = all
    int only_threads = 0;  // 0 = 1 and 2
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--quick") {
            quick = true;
            rounds = 1;
            ms = 20;
        } else if (arg == "--rounds" && i + 1 < argc) {
            rounds = std::max(1, std::atoi(argv[++i]));
        } else if (arg == "--ms" && i + 1 < argc) {
            ms = std::max(1, std::atoi(argv[++i]));
        } else if (arg == "--only" && i + 1 < argc) {
            only = argv[++i];
        } else if (arg == "--threads" && i + 1 < argc) {
            only_threads = std::atoi(argv[++i]);
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    const auto duration = std::chrono::milliseconds(ms);

    std::printf("# keylock local backend benchmark%s\n\n",
                quick ? " (--quick smoke run: numbers are meaningless)" : "");
    std::printf("- machine: %d usable CPUs (nproc), %ld online; CPU: %s\n", usable_cpus(),
                sysconf(_SC_NPROCESSORS_ONLN), read_cpu_model().c_str());
    std::printf("- compiler: g++ %s%s\n", __VERSION__,
#ifdef NDEBUG
                ", NDEBUG"
#else
                ", assertions ON (not a Release build?)"
#endif
    );
    std::printf("- load average at start: %s\n", read_loadavg().c_str());
    std::printf("- %d round(s) x %d ms per measurement, contenders interleaved; median reported\n\n", rounds, ms);
    std::fflush(stdout);

    // Workload: keys and the random sequence are made once, outside any timing.
    Workload w;
    w.keys.reserve(kKeys);
    for (std::size_t i = 0; i < kKeys; ++i) w.keys.push_back("client-" + std::to_string(i));
    w.seq.resize(kSeqMask + 1);
    std::mt19937_64 rng(20240601);
    std::uniform_int_distribution<std::uint32_t> pick(0, kKeys - 1);
    for (auto& s : w.seq) s = pick(rng);

    // The contenders' state lives across rounds (a warm map stays warm, a TTL registry keeps its
    // entries), as it would in a long-running process.
    keylock::KeyedLockRegistry reg_default;
    keylock::LocalOptions ttl_opts;
    ttl_opts.idle_ttl = std::chrono::seconds(30);
    keylock::KeyedLockRegistry reg_ttl(ttl_opts);
    keylock::KeyedLockRegistry reg_hot;
    keylock::KeyedLockRegistry reg_hot_ttl(ttl_opts);
    keylock::KeyedLockRegistry reg_handle;       // separate: its pinned entry must not help reg_hot
    std::vector<keylock::KeyMutex> hot_handles;  // one per thread, all for the hot key
    for (int t = 0; t < 2; ++t) hot_handles.push_back(reg_handle.obtain(w.hot));
    std::mutex global_mu;
    auto map = std::make_unique<MapOfMutexes>();
    auto stripes = std::make_unique<std::array<std::mutex, kStripes>>();
    auto shared_stripes = std::make_unique<std::array<std::shared_mutex, kStripes>>();
    keylock::KeyedLockRegistry reg_shared;
    std::mutex hot_mu;

    std::vector<Measurement> ms_list;
    auto selected = [&](std::string_view id, int threads) {
        if (only_threads != 0 && threads != only_threads) return false;
        if (only.empty()) return true;
        std::string_view rest = only;  // look for `id` as one comma-separated item
        while (!rest.empty()) {
            const auto comma = rest.find(',');
            if (rest.substr(0, comma) == id) return true;
            if (comma == std::string_view::npos) break;
            rest.remove_prefix(comma + 1);
        }
        return false;
    };
    auto add = [&](std::string id, std::string label, bool hot, int threads, auto op) {
        Measurement m;
        m.id = std::move(id);
        m.label = std::move(label);
        m.threads = threads;
        m.run = [&w, hot, threads, op](std::chrono::milliseconds d) mutable {
            return run_threads(threads, d, w, hot, op);
        };
        if (!selected(m.id, threads)) m.run = nullptr;
        ms_list.push_back(std::move(m));
    };
    for (int t : {1, 2}) {
        add("keylock", "keylock, default (frees idle entries)", false, t, KeylockOp{reg_default});
        add("keylock_ttl", "keylock, idle_ttl=30s", false, t, KeylockOp{reg_ttl});
        add("global", "(a) one global std::mutex", false, t, GlobalMutexOp{global_mu});
        add("map", "(b) map<string, mutex> + global mutex, never frees", false, t, MapOfMutexesOp{*map});
        add("striped", "(c) 1024 striped std::mutex", false, t, StripedOp{*stripes});
        add("shared", "keylock lock_shared, default", false, t, KeylockSharedOp{reg_shared});
        add("striped_shared", "(d) 1024 striped std::shared_mutex, lock_shared", false, t,
            StripedSharedOp{*shared_stripes});
        add("hot_keylock", "hot key: keylock, one key", true, t, KeylockOp{reg_hot});
        add("hot_keylock_ttl", "hot key: keylock, idle_ttl=30s (extra)", true, t, KeylockOp{reg_hot_ttl});
        add("hot_handle", "hot key: keylock, obtain() handle (extra)", true, t, KeyMutexOp{hot_handles});
        add("hot_mutex", "hot key: bare std::mutex", true, t, BareMutexOp{hot_mu});
    }

    // Warm-up: one short pass of everything (fills the map and the TTL registry, faults pages
    // in, lets the CPU clock settle). Not counted.
    const auto warm = std::chrono::milliseconds(quick ? 5 : 100);
    for (auto& m : ms_list) {
        if (m.run) m.run(warm);
    }

    const int cpus = usable_cpus();
    std::vector<double> noise;  // others' CPU share, per round
    for (int r = 0; r < rounds; ++r) {
        const std::size_t n = ms_list.size();
        const CpuSnap before = cpu_snap();
        for (std::size_t i = 0; i < n; ++i) {
            auto& m = ms_list[(i + static_cast<std::size_t>(r) * 3) % n];  // rotate the order
            if (m.run) m.samples.push_back(m.run(duration).ops_per_sec);
        }
        noise.push_back(others_share(before, cpu_snap(), cpus));
        std::fprintf(stderr, "round %d/%d done: other processes used %.0f%% of the CPUs\n", r + 1, rounds,
                     100 * noise.back());
    }

    auto find = [&](std::string_view id, int threads) -> Measurement& {
        for (auto& m : ms_list) {
            if (m.id == id && m.threads == threads) return m;
        }
        std::abort();
    };
    // Median over rounds of the per-round ratio (the two were measured seconds apart).
    auto ratio = [&](std::string_view num, std::string_view den, int threads) {
        const auto& a = find(num, threads).samples;
        const auto& b = find(den, threads).samples;
        std::vector<double> r;
        for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) r.push_back(a[i] / b[i]);
        return median(r);
    };
    auto spread = [](const std::vector<double>& v) {
        if (v.empty()) return 0.0;
        const double med = median(v);
        return med > 0 ? 100.0 * (*std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end())) / med
                       : 0.0;
    };

    // Formatting that shows "n/a" for contenders left out with --only / --threads.
    auto mops = [&](const std::vector<double>& v) {
        char buf[32];
        if (v.empty()) return std::string("n/a");
        std::snprintf(buf, sizeof buf, "%.2f", median(v) / 1e6);
        return std::string(buf);
    };
    auto pct = [&](const std::vector<double>& v) {
        char buf[32];
        if (v.size() < 2) return std::string("-");
        std::snprintf(buf, sizeof buf, "%.0f%%", spread(v));
        return std::string(buf);
    };
    auto times = [](double x) {
        char buf[32];
        if (x <= 0) return std::string("n/a");
        std::snprintf(buf, sizeof buf, "%.2fx", x);
        return std::string(buf);
    };

    std::printf("- load average at end: %s\n", read_loadavg().c_str());
    std::printf("- other processes' CPU use during each round (0%% = quiet machine):");
    for (double x : noise) std::printf(" %.0f%%", 100 * x);
    std::printf("%s\n\n", median(noise) > 0.10 ? "  -- NOISY: figures are below what a quiet machine gives" : "");

    std::printf("## Throughput (lock + unlock, millions of ops/s, median of %d rounds; "
                "spread = (max-min)/median)\n\n",
                rounds);
    std::printf("| contender | 1 thread | spread | 2 threads | spread |\n");
    std::printf("|---|---:|---:|---:|---:|\n");
    for (const auto& m : ms_list) {
        if (m.threads != 1) continue;
        const auto& m2 = find(m.id, 2);
        std::printf("| %s | %s | %s | %s | %s |\n", m.label.c_str(), mops(m.samples).c_str(), pct(m.samples).c_str(),
                    mops(m2.samples).c_str(), pct(m2.samples).c_str());
    }

    std::printf("\n## Ratios (median over rounds of the ratio within a round)\n\n");
    std::printf("| ratio | 1 thread | 2 threads |\n|---|---:|---:|\n");
    struct R {
        const char* label;
        const char* num;
        const char* den;
    };
    const R rows[] = {
        {"keylock / (a) global mutex", "keylock", "global"},
        {"keylock / (b) map of mutexes", "keylock", "map"},
        {"keylock / (c) striped", "keylock", "striped"},
        {"keylock lock_shared / (d) striped shared_mutex", "shared", "striped_shared"},
        {"keylock idle_ttl=30s / (b) map of mutexes", "keylock_ttl", "map"},
        {"keylock idle_ttl=30s / (c) striped", "keylock_ttl", "striped"},
        {"keylock / keylock idle_ttl=30s", "keylock", "keylock_ttl"},
        {"hot key: keylock / std::mutex", "hot_keylock", "hot_mutex"},
        {"hot key: keylock obtain() handle / std::mutex", "hot_handle", "hot_mutex"},
    };
    for (const auto& r : rows) {
        std::printf("| %s | %s | %s |\n", r.label, times(ratio(r.num, r.den, 1)).c_str(),
                    times(ratio(r.num, r.den, 2)).c_str());
    }

    std::printf("\n## Targets (2 threads)\n\n");
    std::printf("| target | measured | result |\n|---|---:|---|\n");
    struct T {
        const char* label;
        const char* num;
        const char* den;
        double want;
    };
    const T targets[] = {
        {"keylock >= 5x (b) map of mutexes", "keylock", "map", 5.0},
        {"keylock >= 0.5x (c) striped", "keylock", "striped", 0.5},
        {"hot key: keylock >= 0.5x std::mutex", "hot_keylock", "hot_mutex", 0.5},
        {"keylock lock_shared >= 0.5x (d) striped shared_mutex", "shared", "striped_shared", 0.5},
    };
    for (const auto& t : targets) {
        const double got = ratio(t.num, t.den, 2);
        std::printf("| %s | %s | %s |\n", t.label, times(got).c_str(),
                    got <= 0        ? "n/a"
                    : got >= t.want ? "PASS"
                                    : "FAIL");
    }

    const auto st = reg_default.stats();
    const auto st_ttl = reg_ttl.stats();
    const auto st_hot = reg_hot.stats();
    std::printf("\n## Registry state at the end\n\n");
    std::printf("- default registry: stats().entries = %llu (expected 0: %s), acquisitions = %llu, contended = %llu\n",
                static_cast<unsigned long long>(st.entries), st.entries == 0 ? "OK" : "NOT ZERO",
                static_cast<unsigned long long>(st.acquisitions), static_cast<unsigned long long>(st.contended));
    std::printf("- idle_ttl=30s registry: stats().entries = %llu (warm entries kept), acquisitions = %llu\n",
                static_cast<unsigned long long>(st_ttl.entries), static_cast<unsigned long long>(st_ttl.acquisitions));
    std::printf("- hot-key registry: stats().entries = %llu, acquisitions = %llu, contended = %llu\n",
                static_cast<unsigned long long>(st_hot.entries), static_cast<unsigned long long>(st_hot.acquisitions),
                static_cast<unsigned long long>(st_hot.contended));
    const auto st_handle = reg_handle.stats();
    std::printf(
        "- obtain() registry: stats().entries = %llu (pinned by the handles), acquisitions = %llu, contended = %llu\n",
        static_cast<unsigned long long>(st_handle.entries), static_cast<unsigned long long>(st_handle.acquisitions),
        static_cast<unsigned long long>(st_handle.contended));
    std::printf("- map baseline: %zu mutexes allocated (never freed)\n", map->map.size());
    std::fflush(stdout);

    hot_handles.clear();
    const auto st_end = reg_handle.stats();
    std::printf("- obtain() registry after the handles are gone: stats().entries = %llu (expected 0: %s)\n",
                static_cast<unsigned long long>(st_end.entries), st_end.entries == 0 ? "OK" : "NOT ZERO");

    return 0;
}
