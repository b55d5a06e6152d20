// SPDX-License-Identifier: BSL-1.0
// bench_topology — the Redis Cluster and Redlock topologies of the Redis backend, against
// baselines measured in the same run (it starts its own servers, on loopback). See
// docs/benchmarks.md.
//
//   keylock_bench_topology            full run (~70 s)
//   keylock_bench_topology --quick    smoke run, for CI: checks that it runs
//   options: --rounds N  --ms N (per cluster window)  --pairs N (Redlock pairs per round)
//            --caps P,P... (the CPU caps per server of the capped cluster variants, % of a core;
//            default 20,10)  --cap-period-us N (cpu.cfs_period_us, default 100000)
//            --registries N --threads N (cluster load: registries x threads each, default 4 x 32)
//            --only cluster|redlock
//
// Figures:
//   cluster     a 1-master and a 3-master Redis Cluster (no replicas), both up for the whole run;
//               4 registries x 32 threads lock + release distinct keys: pairs/s of each and the
//               ratio 3/1, with the CPU each redis-server, this process and the rest of the machine
//               used in the window (/proc/PID/stat, /proc/stat) and how many scripts each server
//               read per read event (INFO). Measured as is (the servers and the client share the
//               machine's two cores) and with each redis-server capped by a cgroup v1 CPU quota
//               (each cap of --caps), where the servers are the bottleneck, as they would be on
//               machines of their own. The capped variants need a writable /sys/fs/cgroup/cpu
//               (root, cgroup v1); without one they are skipped, and the output says why.
//   redlock     5 independent redis-servers, each behind a TcpProxy that delays every chunk by
//               1, 2, 3, 4 and 5 ms (both directions: a round trip through proxy i costs 2 x i
//               ms). One thread locks and releases distinct keys through redlock:// on the
//               proxies: p50 / p99 of one lock + release() pair. The baseline, in the same
//               rounds: classic sequential Redlock with hiredis (one blocking connection per node
//               through the same proxies): SET key token NX PX on each node in turn, then the
//               compare-and-delete script on each node in turn.
// Ratios are medians over rounds of same-round ratios; the exit status is 0 whatever they are
// (1 only if something could not be set up).
//
// The CPU accounting (/proc) and the cgroup v1 caps of the capped variants are in
// bench/cpu_caps.hpp.
#include <hiredis/hiredis.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <keylock/keylock.hpp>

#include "cpu_caps.hpp"
#include "redis_server.hpp"
#include "tcp_proxy.hpp"
#include "topology.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using keylock::KeyedLockRegistry;
using keylock::bench::CpuCaps;
using keylock::bench::process_cpu;
using keylock::bench::system_busy;
using keylock::test::ClusterDeployment;
using keylock::test::RedlockDeployment;
using keylock::test::TcpProxy;

struct Options {
    bool quick = false;
    int rounds = 5;
    int ms = 1000;                     // per cluster measurement
    int pairs = 100;                   // keylock Redlock pairs per round (and as many with the guard destroyed)
    int seq_pairs = 40;                // sequential-baseline pairs per round
    std::vector<int> caps = {20, 10};  // per redis-server, % of a core: the capped cluster variants
    int cap_period_us = 100000;        // its cgroup's cpu.cfs_period_us
    int registries = 4;                // cluster load: registries...
    int threads_each = 32;             // ... times threads each
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

double percentile(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- Cluster scaling -----------------------------------------------------------------------

/// One cluster under test: the deployment and the registries that load it.
struct ClusterUnderTest {
    std::string name;
    std::unique_ptr<ClusterDeployment> deployment;
    std::vector<KeyedLockRegistry> registries;
    std::vector<pid_t> pids() const {
        std::vector<pid_t> p;
        for (std::size_t i = 0; i < deployment->size(); ++i) p.push_back(deployment->node(i).pid());
        return p;
    }
};

/// What one window of load measured.
struct Window {
    double pairs_per_s = 0;
    double seconds = 0;
    long pairs = 0;
    std::vector<double> server_cpu;  // CPU seconds per server over the window
    double client_cpu = 0;           // CPU seconds of this process
    double other_cpu = 0;            // CPU seconds of everything else on the machine
    long commands = 0;               // EVALSHA and EVAL calls the servers served (INFO commandstats)
    long reads = 0;                  // read events the servers handled (INFO stats total_reads_processed)
    double server_total() const {
        double t = 0;
        for (double s : server_cpu) t += s;
        return t;
    }
};

/// Scripts the servers on `ports` ran (EVALSHA + EVAL calls) and reads they did, summed.
std::pair<long, long> commands_and_reads(const std::vector<int>& ports) {
    long commands = 0, reads = 0;
    for (int port : ports) {
        const std::string info = keylock::test::call(port, {"INFO", "stats", "commandstats"}).str;
        reads += std::atol(keylock::test::info_field(info, "total_reads_processed").c_str());
        for (const char* name : {"cmdstat_evalsha", "cmdstat_eval"}) {
            const std::string f = keylock::test::info_field(info, name);  // calls=N,usec=...
            if (f.rfind("calls=", 0) == 0) commands += std::atol(f.c_str() + 6);
        }
    }
    return {commands, reads};
}

/// Lock + release pairs per second on distinct keys: `threads_each` threads on each registry,
/// every thread with its own keys (guards destroyed at once, as bench_redis does).
Window load_window(ClusterUnderTest& c, int threads_each, int ms, const std::string& tag) {
    const std::vector<pid_t> pids = c.pids();
    const std::vector<int> ports = c.deployment->ports();
    std::atomic<bool> go{false}, stop{false};
    const int threads = threads_each * static_cast<int>(c.registries.size());
    std::vector<long> counts(static_cast<std::size_t>(threads), 0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            KeyedLockRegistry& r = c.registries[static_cast<std::size_t>(t) % c.registries.size()];
            const std::string base = tag + "-t" + std::to_string(t) + "-";
            long n = 0;
            while (!go.load()) std::this_thread::yield();
            while (!stop.load(std::memory_order_relaxed)) {
                keylock::Guard g = r.lock(base + std::to_string(n));
                ++n;
            }
            counts[static_cast<std::size_t>(t)] = n;
        });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // threads parked
    Window w;
    const auto [commands_before, reads_before] = commands_and_reads(ports);
    std::vector<double> before;
    for (pid_t p : pids) before.push_back(process_cpu(p));
    const double client_before = process_cpu(::getpid());
    const double busy_before = system_busy();
    const auto start = Clock::now();
    go = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    stop = true;
    for (auto& th : pool) th.join();
    w.seconds = seconds_since(start);
    for (std::size_t i = 0; i < pids.size(); ++i) w.server_cpu.push_back(process_cpu(pids[i]) - before[i]);
    w.client_cpu = process_cpu(::getpid()) - client_before;
    w.other_cpu = std::max(0.0, system_busy() - busy_before - w.client_cpu - w.server_total());
    const auto [commands_after, reads_after] = commands_and_reads(ports);
    w.commands = commands_after - commands_before;
    w.reads = reads_after - reads_before;
    for (long n : counts) w.pairs += n;
    w.pairs_per_s = static_cast<double>(w.pairs) / w.seconds;
    return w;
}

/// printf into a std::string.
template <typename... Args>
std::string strf(const char* format, Args... args) {
    const int n = std::snprintf(nullptr, 0, format, args...);
    std::string out(static_cast<std::size_t>(std::max(n, 0)) + 1, '\0');
    std::snprintf(out.data(), out.size(), format, args...);
    out.pop_back();
    return out;
}

/// What a part of the benchmark prints: rows of the main table, other tables, notes.
struct Report {
    std::vector<std::string> rows, extra, notes;
};

/// The windows of one variant (uncapped or capped) of one cluster, over the rounds.
struct Series {
    std::vector<Window> windows;
    double med(double (*f)(const Window&)) const {
        std::vector<double> v;
        for (const auto& w : windows) v.push_back(f(w));
        return median(v);
    }
    double rate() const {
        return med([](const Window& w) { return w.pairs_per_s; });
    }
    /// A row of the CPU table: median cores used (CPU s / s) and CPU per pair.
    std::string cpu_row(const std::string& what) const {
        std::string each;
        for (std::size_t i = 0; i < windows.front().server_cpu.size(); ++i) {
            std::vector<double> v;
            for (const auto& w : windows) v.push_back(w.server_cpu[i] / w.seconds);
            each += strf("%s%.2f", i ? " / " : "", median(v));
        }
        return strf(
            "| %s | %.0f | %s | %.2f | %.2f | %.2f | %.1f | %.1f | %.1f | %.2f |", what.c_str(), rate(), each.c_str(),
            med([](const Window& w) { return w.server_total() / w.seconds; }),
            med([](const Window& w) { return w.client_cpu / w.seconds; }),
            med([](const Window& w) { return w.other_cpu / w.seconds; }),
            med([](const Window& w) { return w.server_total() / static_cast<double>(std::max(1L, w.pairs)) * 1e6; }),
            med([](const Window& w) { return w.client_cpu / static_cast<double>(std::max(1L, w.pairs)) * 1e6; }),
            med([](const Window& w) {
                return static_cast<double>(w.commands) / static_cast<double>(std::max(1L, w.reads));
            }),
            med([](const Window& w) {
                return static_cast<double>(w.commands) / static_cast<double>(std::max(1L, w.pairs));
            }));
    }
};

/// Part 1: a 1-master and a 3-master cluster, uncapped and (if cgroups allow) capped at each of
/// o.caps.
Report run_cluster(const Options& o) {
    Report rep;
    std::fprintf(stderr, "starting a 1-master and a 3-master Redis Cluster...\n");
    ClusterUnderTest one{"1m", std::make_unique<ClusterDeployment>(1, 0), {}};
    ClusterUnderTest three{"3m", std::make_unique<ClusterDeployment>(3, 0), {}};
    for (auto* c : {&one, &three}) {
        for (int i = 0; i < o.registries; ++i) {
            c->registries.push_back(KeyedLockRegistry::from_url(c->deployment->url()));
        }
        load_window(*c, o.threads_each, o.quick ? 50 : 300, c->name + "-warm");  // connections, scripts, slot map
    }
    std::vector<pid_t> all_pids = one.pids();
    for (pid_t p : three.pids()) all_pids.push_back(p);
    CpuCaps caps(all_pids, o.cap_period_us);  // destroyed (groups removed) before the servers stop
    if (!caps.ok()) std::fprintf(stderr, "CPU caps not available: %s\n", caps.why().c_str());

    /// One variant: no cap (percent 0) or every server capped at `percent` % of a core.
    struct Variant {
        int percent = 0;
        Series one, three;
        std::vector<double> ratio;
        long throttled = 0;
        std::string name() const { return percent ? "capped at " + std::to_string(percent) + "%" : "uncapped"; }
    };
    std::vector<Variant> variants(1);
    if (caps.ok()) {
        for (int c : o.caps) variants.push_back(Variant{c, {}, {}, {}, 0});
    }
    for (int round = 0; round < o.rounds; ++round) {
        const std::string tag = "r" + std::to_string(round);
        // Alternate which cluster goes first, so that drift in the machine's load hits both.
        const bool one_first = round % 2 == 0;
        for (auto& v : variants) {
            const long before = caps.ok() ? caps.throttled_periods() : 0;
            if (caps.ok() && !caps.cap(v.percent)) throw std::runtime_error("cannot set the CPU caps: " + caps.why());
            const std::string key_tag = tag + "c" + std::to_string(v.percent);
            Window w1, w3;
            if (one_first) w1 = load_window(one, o.threads_each, o.ms, one.name + key_tag);
            w3 = load_window(three, o.threads_each, o.ms, three.name + key_tag);
            if (!one_first) w1 = load_window(one, o.threads_each, o.ms, one.name + key_tag);
            if (caps.ok()) {
                caps.cap(0);
                v.throttled += caps.throttled_periods() - before;
            }
            v.one.windows.push_back(w1);
            v.three.windows.push_back(w3);
            v.ratio.push_back(w3.pairs_per_s / w1.pairs_per_s);
            std::fprintf(stderr,
                         "round %d/%d %s: 1 master %.0f pairs/s (servers %.2f cores, client %.2f, others %.2f), "
                         "3 masters %.0f pairs/s (servers %.2f cores, client %.2f, others %.2f)\n",
                         round + 1, o.rounds, v.name().c_str(), w1.pairs_per_s, w1.server_total() / w1.seconds,
                         w1.client_cpu / w1.seconds, w1.other_cpu / w1.seconds, w3.pairs_per_s,
                         w3.server_total() / w3.seconds, w3.client_cpu / w3.seconds, w3.other_cpu / w3.seconds);
        }
    }

    rep.extra.emplace_back("CPU split during the cluster windows (medians; cores = CPU seconds per second of the "
                           "window, from /proc/PID/stat utime + stime; others = the rest of the machine; scripts "
                           "from INFO commandstats, reads from INFO stats total_reads_processed):\n");
    rep.extra.emplace_back(
        "| cluster | pairs/s | each redis-server, cores | all servers | client | others | "
        "servers, us CPU per pair | client, us CPU per pair | scripts per server read | scripts per pair |");
    rep.extra.emplace_back("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (const auto& v : variants) {
        const double r = median(v.ratio);
        if (v.percent == 0) {
            rep.rows.push_back(strf("| cluster, uncapped: 1 master, pairs/s | %.0f | | |", v.one.rate()));
            rep.rows.push_back(strf("| cluster, uncapped: 3 masters, pairs/s | %.0f | | |", v.three.rate()));
            rep.rows.push_back(strf("| cluster, uncapped: 3 masters / 1 master | %.2fx | (none) | |", r));
        } else {
            // How much of its quota each server used: a cap that binds is near 100%.
            const double quota = v.percent / 100.0;
            const double use1 = v.one.med([](const Window& w) { return w.server_total() / w.seconds; }) / quota;
            const double use3 = v.three.med([](const Window& w) { return w.server_total() / w.seconds; }) / 3 / quota;
            rep.rows.push_back(
                strf("| cluster, each server capped at %d%% of a core: 1 master, pairs/s (server at %.0f%% "
                     "of its cap) | %.0f | | |",
                     v.percent, 100 * use1, v.one.rate()));
            rep.rows.push_back(strf("| cluster, each server capped at %d%% of a core: 3 masters, pairs/s (servers at "
                                    "%.0f%% of their caps) | %.0f | | |",
                                    v.percent, 100 * use3, v.three.rate()));
            rep.rows.push_back(strf("| cluster, capped at %d%%: 3 masters / 1 master%s | %.2fx | >= 2x | %s |",
                                    v.percent, use3 < 0.9 ? " (3 masters below their caps: not server-bound)" : "", r,
                                    r >= 2.0 ? "PASS" : "FAIL"));
        }
        rep.extra.push_back(v.one.cpu_row(v.name() + ", 1 master"));
        rep.extra.push_back(v.three.cpu_row(v.name() + ", 3 masters"));
    }
    if (!caps.ok()) {
        rep.rows.push_back(
            strf("| cluster, capped: 3 masters / 1 master | not measured: %s | >= 2x | |", caps.why().c_str()));
    }
    rep.notes.push_back(strf("cluster: %d rounds of %d ms per cluster and variant (the order of the clusters "
                             "alternates), %d registries x %d threads, distinct keys, guards destroyed at once",
                             o.rounds, o.ms, o.registries, o.threads_each));
    if (caps.ok()) {
        std::string throttled;
        for (const auto& v : variants) {
            if (v.percent) throttled += strf("%s%ld at %d%%", throttled.empty() ? "" : ", ", v.throttled, v.percent);
        }
        rep.notes.push_back(strf("capped: a cgroup v1 cpu group per redis-server, cpu.cfs_period_us = %d, "
                                 "cpu.cfs_quota_us = the cap's share of it; periods throttled (summed over the "
                                 "servers): %s",
                                 o.cap_period_us, throttled.c_str()));
    } else {
        rep.notes.push_back("capped variant skipped: " + caps.why());
    }
    return rep;
}

// ---- Redlock latency -----------------------------------------------------------------------

/// A blocking hiredis connection to 127.0.0.1:port; exits if it cannot connect.
redisContext* connect_or_exit(int port) {
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c == nullptr || c->err) {
        std::fprintf(stderr, "bench: cannot connect to 127.0.0.1:%d\n", port);
        std::exit(1);
    }
    return c;
}

/// Milliseconds of one PING round trip on `c` (median of `n`).
double ping_ms(redisContext* c, int n) {
    std::vector<double> v;
    for (int i = 0; i < n; ++i) {
        const auto t = Clock::now();
        freeReplyObject(redisCommand(c, "PING"));
        v.push_back(seconds_since(t) * 1000);
    }
    return median(v);
}

constexpr const char* kCompareAndDelete =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Classic sequential Redlock, one pair: SET NX PX on each node in turn, then the
/// compare-and-delete on each node in turn. Returns whether a majority granted the lock.
bool sequential_pair(const std::vector<redisContext*>& nodes, const std::string& key, const std::string& token) {
    int granted = 0;
    for (redisContext* c : nodes) {
        auto* r = static_cast<redisReply*>(redisCommand(c, "SET %s %s NX PX 30000", key.c_str(), token.c_str()));
        if (r != nullptr && r->type == REDIS_REPLY_STATUS && std::strcmp(r->str, "OK") == 0) ++granted;
        freeReplyObject(r);
    }
    for (redisContext* c : nodes) {
        freeReplyObject(redisCommand(c, "EVAL %s 1 %s %s", kCompareAndDelete, key.c_str(), token.c_str()));
    }
    return granted > static_cast<int>(nodes.size()) / 2;
}

/// Part 2: Redlock pair latency through delaying proxies, keylock against sequential Redlock.
Report run_redlock(const Options& o) {
    Report rep;
    std::fprintf(stderr, "starting 5 redis-servers behind delaying proxies...\n");
    const std::vector<int> delays_ms = {1, 2, 3, 4, 5};
    RedlockDeployment redlock(static_cast<int>(delays_ms.size()));
    std::vector<std::unique_ptr<TcpProxy>> proxies;
    std::string url = "redlock://";
    for (std::size_t i = 0; i < delays_ms.size(); ++i) {
        proxies.push_back(std::make_unique<TcpProxy>(redlock.server(i).port()));
        proxies.back()->delay(std::chrono::milliseconds(delays_ms[i]));
        url += (i ? ",127.0.0.1:" : "127.0.0.1:") + std::to_string(proxies.back()->port());
    }
    auto reg = KeyedLockRegistry::from_url(url);
    std::vector<redisContext*> seq_nodes;
    for (const auto& p : proxies) seq_nodes.push_back(connect_or_exit(p->port()));
    for (int i = 0; i < 3; ++i) reg.lock("warm-" + std::to_string(i)).release();  // connections, scripts

    std::mt19937_64 rng(std::random_device{}());
    std::vector<double> kl_all, kl_guard_all, seq_all, ratio, rtt_majority, rtt_slowest;
    std::vector<std::vector<double>> rtts(seq_nodes.size());
    int seq_failed = 0;
    for (int round = 0; round < o.rounds; ++round) {
        // The round trip through each proxy now (PING, blocking hiredis).
        std::vector<double> rtt;
        for (std::size_t i = 0; i < seq_nodes.size(); ++i) {
            rtt.push_back(ping_ms(seq_nodes[i], o.quick ? 2 : 10));
            rtts[i].push_back(rtt.back());
        }
        std::vector<double> sorted = rtt;
        std::sort(sorted.begin(), sorted.end());
        rtt_majority.push_back(sorted[sorted.size() / 2]);
        rtt_slowest.push_back(sorted.back());

        const std::string tag = "r" + std::to_string(round) + "-";
        std::vector<double> kl, seq;
        for (int n = 0; n < o.pairs; ++n) {
            const auto t = Clock::now();
            keylock::Guard g = reg.lock("kl-" + tag + std::to_string(n));
            g.release();
            kl.push_back(seconds_since(t) * 1000);
        }
        for (int n = 0; n < o.pairs; ++n) {  // extra: the guard destroyed, its release not awaited
            const auto t = Clock::now();
            { keylock::Guard g = reg.lock("kg-" + tag + std::to_string(n)); }
            kl_guard_all.push_back(seconds_since(t) * 1000);
        }
        for (int n = 0; n < o.seq_pairs; ++n) {
            char token[33];
            std::snprintf(token, sizeof token, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                          static_cast<unsigned long long>(rng()));
            const auto t = Clock::now();
            if (!sequential_pair(seq_nodes, "seq-" + tag + std::to_string(n), token)) ++seq_failed;
            seq.push_back(seconds_since(t) * 1000);
        }
        ratio.push_back(median(kl) / median(seq));
        kl_all.insert(kl_all.end(), kl.begin(), kl.end());
        seq_all.insert(seq_all.end(), seq.begin(), seq.end());
        std::fprintf(stderr,
                     "round %d/%d redlock: keylock pair p50 %.2f ms, sequential pair p50 %.2f ms (%.2fx); round "
                     "trips %.2f/%.2f/%.2f/%.2f/%.2f ms\n",
                     round + 1, o.rounds, median(kl), median(seq), ratio.back(), rtt[0], rtt[1], rtt[2], rtt[3],
                     rtt[4]);
    }
    for (redisContext* c : seq_nodes) redisFree(c);

    const double major = median(rtt_majority), slowest = median(rtt_slowest);
    double sum_rtt = 0;
    std::string delays, measured;
    for (std::size_t i = 0; i < rtts.size(); ++i) {
        sum_rtt += median(rtts[i]);
        delays += strf("%s%d", i ? "/" : "", delays_ms[i]);
        measured += strf("%s%.2f", i ? "/" : "", median(rtts[i]));
    }
    const double kl50 = percentile(kl_all, 0.5), kl99 = percentile(kl_all, 0.99);
    const double r = median(ratio);
    rep.rows.push_back("| redlock: proxy delay per node, one way (each chunk, both directions) | " + delays +
                       " ms | | |");
    rep.rows.push_back("| redlock: round trip per node, measured (PING through the proxy) | " + measured + " ms | | |");
    rep.rows.push_back(
        strf("| redlock: one round of the slowest majority node (3rd-fastest round trip) | %.2f ms | | |", major));
    rep.rows.push_back(strf("| redlock: keylock, lock + release(), p50 / p99 | %.2f / %.2f ms | | |", kl50, kl99));
    rep.rows.push_back(strf("| redlock: keylock p50 / 3 rounds of the slowest majority node (%.2f ms; of the "
                            "slowest node: %.2f ms) | %.2fx | | |",
                            3 * major, 3 * slowest, kl50 / (3 * major)));
    rep.rows.push_back(strf("| redlock: sequential Redlock (5 SET NX + 5 compare-and-delete), p50 / p99 | %.2f / "
                            "%.2f ms | | |",
                            percentile(seq_all, 0.5), percentile(seq_all, 0.99)));
    rep.rows.push_back(strf("| redlock: sequential p50 / its 10 round trips (%.2f ms) | %.2fx | | |", 2 * sum_rtt,
                            percentile(seq_all, 0.5) / (2 * sum_rtt)));
    rep.rows.push_back(strf("| redlock: keylock / sequential, pair latency p50 | %.2fx | <= 0.5x | %s |", r,
                            r <= 0.5 ? "PASS" : "FAIL"));
    rep.rows.push_back(strf("| redlock (extra): lock + guard destroyed (release not awaited), p50 / p99 | %.2f / "
                            "%.2f ms | | |",
                            percentile(kl_guard_all, 0.5), percentile(kl_guard_all, 0.99)));
    rep.notes.push_back(strf("redlock: %d rounds of %d keylock pairs (and %d with the guard destroyed) and %d "
                             "sequential pairs, one thread, distinct keys; keylock does 3 parallel rounds per pair "
                             "(acquire, fencing bump, release), each decided at a majority; the baseline does 10 "
                             "sequential round trips (5 acquires + 5 releases)",
                             o.rounds, o.pairs, o.pairs, o.seq_pairs));
    if (seq_failed) rep.notes.push_back(strf("%d sequential pairs got no majority", seq_failed));
    return rep;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    bool cluster = true, redlock = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") {
            o.quick = true;
            o.rounds = 1;
            o.ms = 100;
            o.pairs = 5;
            o.seq_pairs = 3;
        } else if (a == "--rounds" && i + 1 < argc) {
            o.rounds = std::max(1, std::atoi(argv[++i]));
        } else if (a == "--ms" && i + 1 < argc) {
            o.ms = std::max(10, std::atoi(argv[++i]));
        } else if (a == "--pairs" && i + 1 < argc) {
            o.pairs = std::max(1, std::atoi(argv[++i]));
            o.seq_pairs = std::max(1, o.pairs * 2 / 5);
        } else if (a == "--caps" && i + 1 < argc) {
            o.caps.clear();
            std::istringstream list(argv[++i]);
            for (std::string c; std::getline(list, c, ',');) {
                if (std::atoi(c.c_str()) > 0) o.caps.push_back(std::min(100, std::atoi(c.c_str())));
            }
        } else if (a == "--threads" && i + 1 < argc) {
            o.threads_each = std::max(1, std::atoi(argv[++i]));
        } else if (a == "--registries" && i + 1 < argc) {
            o.registries = std::max(1, std::atoi(argv[++i]));
        } else if (a == "--cap-period-us" && i + 1 < argc) {
            o.cap_period_us = std::clamp(std::atoi(argv[++i]), 1000, 1000000);
        } else if (a == "--only" && i + 1 < argc &&
                   (std::string(argv[i + 1]) == "cluster" || std::string(argv[i + 1]) == "redlock")) {
            cluster = std::string(argv[++i]) == "cluster";
            redlock = !cluster;
        } else {
            std::fprintf(stderr,
                         "usage: %s [--quick] [--rounds N] [--ms N] [--pairs N] [--caps P,P...] [--cap-period-us N] "
                         "[--registries N] [--threads N] "
                         "[--only cluster|redlock]\n",
                         argv[0]);
            return 64;
        }
    }
    const auto began = Clock::now();
    Report all;
    try {
        for (const auto& part : {cluster ? run_cluster(o) : Report{}, redlock ? run_redlock(o) : Report{}}) {
            all.rows.insert(all.rows.end(), part.rows.begin(), part.rows.end());
            all.extra.insert(all.extra.end(), part.extra.begin(), part.extra.end());
            all.notes.insert(all.notes.end(), part.notes.begin(), part.notes.end());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_topology: %s\n", e.what());
        return 1;
    }
    std::printf("## Redis Cluster and Redlock (servers on loopback, started by the benchmark)\n\n");
    std::printf("| figure | measured | target | result |\n|---|---:|---:|---|\n");
    for (const auto& row : all.rows) std::printf("%s\n", row.c_str());
    if (!all.extra.empty()) std::printf("\n");
    for (const auto& line : all.extra) std::printf("%s\n", line.c_str());
    std::printf("\n");
    for (const auto& note : all.notes) std::printf("- %s\n", note.c_str());
    std::printf("- run time %.0f s\n", seconds_since(began));
    return 0;
}
