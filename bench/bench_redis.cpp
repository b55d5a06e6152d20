// SPDX-License-Identifier: BSL-1.0
// bench_redis — the Redis backend against the same redis-server in the same run (it starts its
// own, on loopback). See docs/benchmarks.md.
//
//   keylock_bench_redis            full run (5 rounds of 1 s per throughput measurement)
//   keylock_bench_redis --quick    smoke run, for CI: checks that it runs
//   options: --rounds N  --ms N  --only locks|modes (one part; both by default)
//
// Figures:
//   ping        raw round trips/s of PING over one blocking hiredis connection (the baseline)
//   seq         one thread, lock + release of distinct keys, one after the other
//   t64         64 threads on distinct keys through one registry
//   ceiling     the server's own ceiling for the same scripts: keylock's acquire and release
//               scripts alone, pipelined x16 on 64 connections from one thread, each release
//               given its acquire's fencing token (redis-benchmark cannot feed one reply into a
//               later command, so its releases would only find absent keys)
//   node        node-redlock (npm redlock + ioredis, bench/node-redlock) with 64 concurrent loops
//               on distinct keys, in a Node process against the same server (not with --quick;
//               needs node and npm, and the npm registry for its first `npm install`)
//   handoff     one process releases, a waiting process acquires: latency p50 / p99
//   commands    8 threads of one process contending one key: Redis commands per acquisition
// Modes (issue 16), in the same rounds:
//   shared      one thread, lock_shared + release of distinct keys, against the round's PING rate
//   permits     64 threads, acquire_permits(key_i, 1, 8) + release on distinct keys
//   one key     64 threads, acquire_permits(key, 1, 8) + release on ONE key: acquisitions/s, and
//               Redis commands per acquisition (INFO commandstats, as `commands` above)
//   redis-semaphore  npm redis-semaphore's Semaphore with ioredis (bench/node-redis-semaphore),
//               64 concurrent loops, on distinct keys and on one key of limit 8 (not with --quick)
// Ratios are medians over rounds of same-round ratios; the exit status is 0 whatever they are.
#include <hiredis/hiredis.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <keylock/keylock.hpp>

#include "backends/redis/scripts.hpp"
#include "redis_server.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using keylock::KeyedLockRegistry;

struct Options {
    bool quick = false;
    int rounds = 5;
    int ms = 1000;
    int handoffs = 400;
    bool locks = true;  // the exclusive part
    bool modes = true;  // shared locks and permits
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

/// Round trips per second of PING over one blocking hiredis connection.
double ping_rate(int port, int ms) {
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c == nullptr || c->err) {
        std::fprintf(stderr, "bench: cannot connect to redis-server\n");
        std::exit(1);
    }
    long n = 0;
    const auto end = Clock::now() + std::chrono::milliseconds(ms);
    const auto start = Clock::now();
    while (Clock::now() < end) {
        for (int i = 0; i < 64; ++i) freeReplyObject(redisCommand(c, "PING"));
        n += 64;
    }
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    redisFree(c);
    return static_cast<double>(n) / secs;
}

/// Acquire + release pairs per second: `threads` threads on distinct keys through one registry,
/// each pair `take(key)` (a Guard, destroyed at once).
template <class Take>
double pair_rate(int threads, int ms, const std::string& prefix, Take take) {
    std::atomic<bool> go{false}, stop{false};
    std::vector<long> counts(static_cast<std::size_t>(threads), 0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            const std::string base = std::string(prefix).append("-t").append(std::to_string(t)).append("-");
            long n = 0;
            while (!go.load()) std::this_thread::yield();
            while (!stop.load(std::memory_order_relaxed)) {
                keylock::Guard g = take(base + std::to_string(n));
                ++n;
            }
            counts[static_cast<std::size_t>(t)] = n;
        });
    }
    const auto start = Clock::now();
    go = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    stop = true;
    for (auto& th : pool) th.join();
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    long total = 0;
    for (long c : counts) total += c;
    return static_cast<double>(total) / secs;
}

/// The server's ceiling for keylock's own scripts, in acquire + release pairs per second: 64
/// connections, each with 16 acquires of distinct keys in flight, then their 16 releases (each
/// with its acquire's value, so it really deletes and publishes), from one thread.
double ceiling_rate(int port, int ms) {
    constexpr int kConnections = 64, kDepth = 16;
    const std::string token = "0123456789abcdef0123456789abcdef";
    std::vector<redisContext*> cs;
    for (int i = 0; i < kConnections; ++i) cs.push_back(redisConnect("127.0.0.1", port));
    auto load = [&](const std::string& script) {
        auto* reply = static_cast<redisReply*>(redisCommand(cs[0], "SCRIPT LOAD %b", script.data(), script.size()));
        std::string sha = reply != nullptr && reply->type == REDIS_REPLY_STRING ? reply->str : "";
        freeReplyObject(reply);
        return sha;
    };
    const std::string acquire = load(keylock::redis::scripts::acquire);
    const std::string release = load(keylock::redis::scripts::release);
    const std::string lease = "30000", counter = "keylock:fence:{ceiling}";
    // Sends what was appended on every connection, then reads `kDepth` replies from each.
    auto round_trip = [&](const auto& on_reply) {
        for (redisContext* c : cs) {
            for (int done = 0; done == 0;) {
                if (redisBufferWrite(c, &done) != REDIS_OK) return false;
            }
        }
        for (std::size_t i = 0; i < cs.size(); ++i) {
            for (int d = 0; d < kDepth; ++d) {
                void* reply = nullptr;
                if (redisGetReply(cs[i], &reply) != REDIS_OK) return false;
                on_reply(i, d, static_cast<redisReply*>(reply));
                freeReplyObject(reply);
            }
        }
        return true;
    };
    std::vector<std::string> keys(kConnections * kDepth), values(keys.size());
    long pairs = 0;
    const auto start = Clock::now(), end = start + std::chrono::milliseconds(ms);
    for (long batch = 0; Clock::now() < end; ++batch) {
        for (std::size_t i = 0; i < keys.size(); ++i) {
            keys[i] =
                std::string("keylock:ceiling-").append(std::to_string(batch)).append("-").append(std::to_string(i));
            redisAppendCommand(cs[i / kDepth], "EVALSHA %s 2 %b %b %b %b", acquire.c_str(), keys[i].data(),
                               keys[i].size(), counter.data(), counter.size(), token.data(), token.size(), lease.data(),
                               lease.size());
        }
        const bool acquired = round_trip([&](std::size_t c, int d, redisReply* r) {
            const bool won =
                r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->integer == 1;
            values[c * kDepth + static_cast<std::size_t>(d)] =
                won ? std::to_string(r->element[1]->integer).append(":").append(token) : std::string();
        });
        for (std::size_t i = 0; acquired && i < keys.size(); ++i) {
            redisAppendCommand(cs[i / kDepth], "EVALSHA %s 1 %b %b %b", release.c_str(), keys[i].data(), keys[i].size(),
                               values[i].data(), values[i].size(), keys[i].data(), keys[i].size());
        }
        long released = 0;
        if (!acquired || !round_trip([&](std::size_t, int, redisReply* r) {
                released += r != nullptr && r->type == REDIS_REPLY_INTEGER && r->integer == 1 ? 1 : 0;
            })) {
            std::fprintf(stderr, "bench: the ceiling's scripts failed\n");
            std::exit(1);
        }
        pairs += released;
    }
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    for (redisContext* c : cs) redisFree(c);
    return static_cast<double>(pairs) / secs;
}

#ifndef KEYLOCK_NODE_REDLOCK_DIR
#define KEYLOCK_NODE_REDLOCK_DIR ""
#endif

/// Prepares the npm peer in `dir` (the build's copy of bench/<name>/, whose package.json pins
/// the versions): npm install on first use, when `package` is not installed there yet. Returns an
/// empty string, or why not.
std::string prepare_npm_peer(const std::string& dir, const std::string& name, const std::string& package) {
    if (dir.empty()) return std::string("no bench/").append(name).append(" directory in this build");
    if (std::system("command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1") != 0) {
        return "node and npm are not installed";
    }
    const std::string installed =
        std::string("test -d '").append(dir).append("/node_modules/").append(package).append("'");
    const std::string install =
        std::string("cd '").append(dir).append("' && npm install --no-audit --no-fund --silent >npm-install.log 2>&1");
    if (std::system(installed.c_str()) != 0 && std::system(install.c_str()) != 0) {
        return std::string("npm install failed (see ").append(dir).append("/npm-install.log)");
    }
    return {};
}

/// node-redlock's lock + release pairs per second, or 0 if it failed.
double node_redlock_rate(int port, int ms) {
    const std::string cmd =
        "node '" KEYLOCK_NODE_REDLOCK_DIR "/redlock_bench.js' " + std::to_string(port) + " 64 " + std::to_string(ms);
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) return 0;
    double rate = 0;
    if (std::fscanf(p, "%lf", &rate) != 1) rate = 0;
    ::pclose(p);
    return rate;
}

/// Commands clients sent (INFO commandstats, without the commands our scripts run inside the
/// server, which commandstats also counts, and without our own INFO calls).
long command_count(int port) {
    redisContext* c = redisConnect("127.0.0.1", port);
    auto* reply = static_cast<redisReply*>(redisCommand(c, "INFO commandstats"));
    long total = 0;
    if (reply != nullptr && reply->type == REDIS_REPLY_STRING) {
        const std::string text(reply->str, reply->len);
        static const char* const sent[] = {"evalsha", "eval", "subscribe", "unsubscribe", "ping", "auth", "select"};
        for (const char* name : sent) {
            const std::string tag = std::string("cmdstat_") + name + ":calls=";
            if (auto at = text.find(tag); at != std::string::npos) total += std::atol(text.c_str() + at + tag.size());
        }
    }
    freeReplyObject(reply);
    redisFree(c);
    return total;
}

/// Acquisitions on ONE key: `threads` threads each take `take()` (a Guard) and release it at once.
struct OneKey {
    double rate = 0;        // acquisitions per second
    long acquisitions = 0;  // in the window
    long commands = 0;      // commands clients sent meanwhile (command_count)
    int peak = 0;           // most guards held at once (keylock's side only)
};

template <class Take>
OneKey one_key_rate(int port, int threads, int ms, Take take) {
    std::atomic<bool> go{false}, stop{false};
    std::atomic<long> n{0};
    std::atomic<int> held{0}, peak{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&] {
            while (!go.load()) std::this_thread::yield();
            while (!stop.load(std::memory_order_relaxed)) {
                keylock::Guard g = take();
                const int now = held.fetch_add(1) + 1;
                for (int p = peak.load(); now > p && !peak.compare_exchange_weak(p, now);) {
                }
                n.fetch_add(1, std::memory_order_relaxed);
                held.fetch_sub(1);
            }
        });
    }
    const long before = command_count(port);
    const auto start = Clock::now();
    go = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    stop = true;
    for (auto& th : pool) th.join();
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    OneKey out;
    out.commands = command_count(port) - before;
    out.acquisitions = n.load();
    out.peak = peak.load();
    out.rate = static_cast<double>(out.acquisitions) / secs;
    return out;
}

#ifndef KEYLOCK_NODE_REDIS_SEMAPHORE_DIR
#define KEYLOCK_NODE_REDIS_SEMAPHORE_DIR ""
#endif

/// The redis-semaphore peer, 64 concurrent loops: acquisitions/s and commands per acquisition
/// (as it counts them: every command its client sends), zeros if it failed. `mode` is
/// `distinct` or `one`.
OneKey node_semaphore_rate(int port, int ms, const char* mode) {
    const std::string cmd = std::string("node '" KEYLOCK_NODE_REDIS_SEMAPHORE_DIR "/semaphore_bench.js' ")
                                .append(std::to_string(port))
                                .append(" 64 ")
                                .append(std::to_string(ms))
                                .append(" ")
                                .append(mode);
    FILE* p = ::popen(cmd.c_str(), "r");
    OneKey out;
    if (p == nullptr) return out;
    double per = 0;
    if (std::fscanf(p, "%lf %ld %lf", &out.rate, &out.acquisitions, &per) != 3) out = OneKey{};
    out.commands = std::lround(per * static_cast<double>(out.acquisitions));
    ::pclose(p);
    return out;
}

/// Two processes take turns on one key: each release is followed by the other's acquisition.
/// Returns the release-to-acquire latencies in microseconds.
std::vector<double> handoffs(const std::string& url, int count) {
    struct Shared {
        std::atomic<long> released_at_ns;
        std::atomic<int> turn;
        double latency_us[100000];
    };
    auto* sh = static_cast<Shared*>(
        ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    new (sh) Shared{};
    auto now_ns = [] {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
    };
    // Process p acquires on odd (p=1) or even (p=0) turns: it waits in lock() for the other to
    // release, measures, then holds until the other is waiting again, and releases.
    auto player = [&](int p) {
        auto r = KeyedLockRegistry::from_url(url);
        for (int i = p; i < count; i += 2) {
            while (sh->turn.load() != i) std::this_thread::yield();     // the other holds now
            std::this_thread::sleep_for(std::chrono::milliseconds(1));  // let it be waiting... in lock()
            keylock::Guard g = r.lock("handoff");
            const long rel = sh->released_at_ns.load();
            if (i > 0) sh->latency_us[i] = static_cast<double>(now_ns() - rel) / 1000.0;
            sh->turn.store(i + 1);
            std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the other gets into lock()
            sh->released_at_ns.store(now_ns());
            g.release();
        }
    };
    const pid_t child = ::fork();
    if (child == 0) {
        player(1);
        ::_exit(0);
    }
    player(0);
    ::waitpid(child, nullptr, 0);
    std::vector<double> out(sh->latency_us + 1, sh->latency_us + count);
    ::munmap(sh, sizeof(Shared));
    return out;
}

double percentile(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

/// The exclusive part's figures of every round.
struct LockRounds {
    std::vector<double> seq, seq_ratio, t64, node, node_ratio, ceiling, ceiling_ratio;
};

/// The exclusive part after the rounds: commands per acquisition on one key, hand-offs between
/// processes, and its rows of the table.
void locks_part(const Options& o, KeyedLockRegistry& r, int port, const std::string& url,
                const std::string& node_missing, const LockRounds& v) {
    // Commands per acquisition: 8 threads contending one key.
    long acquisitions = 0;
    const long before = command_count(port);
    {
        std::atomic<bool> stop{false};
        std::atomic<long> n{0};
        std::vector<std::thread> pool;
        for (int t = 0; t < 8; ++t) {
            pool.emplace_back([&] {
                while (!stop.load(std::memory_order_relaxed)) {
                    keylock::Guard g = r.lock("contended");
                    n.fetch_add(1, std::memory_order_relaxed);
                }
            });
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(o.ms));
        stop = true;
        for (auto& th : pool) th.join();
        acquisitions = n.load();
    }
    const long commands = command_count(port) - before;

    const auto lat = handoffs(url, o.handoffs);

    const double sr = median(v.seq_ratio);
    std::printf("| one thread, lock + release of distinct keys, pairs/s | %.0f | | |\n", median(v.seq));
    std::printf("| one thread / PING round trips | %.2fx | >= 0.45x | %s |\n", sr, sr >= 0.45 ? "PASS" : "FAIL");
    std::printf("| 64 threads, distinct keys, pairs/s | %.0f | | |\n", median(v.t64));
    if (!v.node.empty()) {
        const double nr = median(v.node_ratio);
        std::printf("| node-redlock, 64 concurrent loops, distinct keys, pairs/s | %.0f | | |\n", median(v.node));
        std::printf("| 64 threads / node-redlock | %.2fx | >= 2x | %s |\n", nr, nr >= 2.0 ? "PASS" : "FAIL");
    } else {
        std::printf("| 64 threads / node-redlock | not measured: %s | >= 2x | |\n",
                    node_missing.empty() ? "node-redlock failed" : node_missing.c_str());
    }
    const double cr = median(v.ceiling_ratio);
    std::printf("| server ceiling: the acquire and release scripts alone, x16 pipelined on 64 connections, pairs/s | "
                "%.0f | | |\n",
                median(v.ceiling));
    std::printf("| 64 threads / server ceiling | %.2fx | >= 0.5x | %s |\n", cr, cr >= 0.5 ? "PASS" : "FAIL");
    const double p50 = percentile(lat, 0.50) / 1000.0, p99 = percentile(lat, 0.99) / 1000.0;
    std::printf("| hand-off between processes, p50 | %.2f ms | <= 1 ms | %s |\n", p50, p50 <= 1.0 ? "PASS" : "FAIL");
    std::printf("| hand-off between processes, p99 | %.2f ms | <= 5 ms | %s |\n", p99, p99 <= 5.0 ? "PASS" : "FAIL");
    const double cpa = acquisitions > 0 ? static_cast<double>(commands) / static_cast<double>(acquisitions) : 0;
    std::printf("| 8 threads on one key: Redis commands per acquisition | %.2f (%ld / %ld) | <= 3 | %s |\n", cpa,
                commands, acquisitions, cpa <= 3.0 ? "PASS" : "FAIL");
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") {
            o.quick = true;
            o.rounds = 1;
            o.ms = 50;
            o.handoffs = 20;
        } else if (a == "--rounds" && i + 1 < argc) {
            o.rounds = std::atoi(argv[++i]);
        } else if (a == "--ms" && i + 1 < argc) {
            o.ms = std::atoi(argv[++i]);
        } else if (a == "--only" && i + 1 < argc &&
                   (std::strcmp(argv[i + 1], "locks") == 0 || std::strcmp(argv[i + 1], "modes") == 0)) {
            o.locks = std::strcmp(argv[++i], "locks") == 0;
            o.modes = !o.locks;
        } else {
            std::fprintf(stderr, "usage: %s [--quick] [--rounds N] [--ms N] [--only locks|modes]\n", argv[0]);
            return 64;
        }
    }
    keylock::test::RedisServer server;
    const std::string url = "redis://127.0.0.1:" + std::to_string(server.port());
    auto r = KeyedLockRegistry::from_url(url);

    const std::string node_missing = o.quick   ? "not run with --quick"
                                     : o.locks ? prepare_npm_peer(KEYLOCK_NODE_REDLOCK_DIR, "node-redlock", "redlock")
                                               : "not run with --only modes";
    const std::string sem_missing =
        o.quick   ? "not run with --quick"
        : o.modes ? prepare_npm_peer(KEYLOCK_NODE_REDIS_SEMAPHORE_DIR, "node-redis-semaphore", "redis-semaphore")
                  : "not run with --only locks";
    std::vector<double> ping, seq, t64, seq_ratio, node, node_ratio, ceiling, ceiling_ratio;
    std::vector<double> shared, shared_ratio, permits, sem, sem_ratio, one, one_cpa, sem_one, sem_one_ratio,
        sem_one_cpa;
    int one_peak = 0;
    for (int round = 0; round < o.rounds; ++round) {
        const std::string tag = "r" + std::to_string(round);
        const double p = ping_rate(server.port(), o.ms);
        ping.push_back(p);
        std::fprintf(stderr, "round %d/%d: ping %.0f/s", round + 1, o.rounds, p);
        if (o.locks) {
            const double s = pair_rate(1, o.ms, tag, [&](const std::string& k) { return r.lock(k); });
            const double t = pair_rate(64, o.ms, tag, [&](const std::string& k) { return r.lock(k); });
            const double n = node_missing.empty() ? node_redlock_rate(server.port(), o.ms) : 0;
            const double c = ceiling_rate(server.port(), o.ms);
            ceiling.push_back(c);
            ceiling_ratio.push_back(t / c);
            seq.push_back(s);
            t64.push_back(t);
            seq_ratio.push_back(s / p);
            if (n > 0) {
                node.push_back(n);
                node_ratio.push_back(t / n);
            }
            std::fprintf(stderr,
                         ", seq %.0f pairs/s, 64 threads %.0f pairs/s, node-redlock %.0f pairs/s, ceiling %.0f pairs/s",
                         s, t, n, c);
        }
        if (o.modes) {
            const double sh =
                pair_rate(1, o.ms, tag + "-shared", [&](const std::string& k) { return r.lock_shared(k); });
            const double pd =
                pair_rate(64, o.ms, tag + "-permits", [&](const std::string& k) { return r.acquire_permits(k, 1, 8); });
            const OneKey sd = sem_missing.empty() ? node_semaphore_rate(server.port(), o.ms, "distinct") : OneKey{};
            const std::string one_key = tag + "-one";
            const OneKey po = one_key_rate(server.port(), 64, o.ms, [&] { return r.acquire_permits(one_key, 1, 8); });
            const OneKey so = sem_missing.empty() ? node_semaphore_rate(server.port(), o.ms, "one") : OneKey{};
            shared.push_back(sh);
            shared_ratio.push_back(sh / p);
            permits.push_back(pd);
            one.push_back(po.rate);
            one_peak = std::max(one_peak, po.peak);
            one_cpa.push_back(
                po.acquisitions > 0 ? static_cast<double>(po.commands) / static_cast<double>(po.acquisitions) : 0);
            if (sd.rate > 0) {
                sem.push_back(sd.rate);
                sem_ratio.push_back(pd / sd.rate);
            }
            const double so_cpa =
                so.rate > 0 ? static_cast<double>(so.commands) / static_cast<double>(so.acquisitions) : 0;
            if (so.rate > 0) {
                sem_one.push_back(so.rate);
                sem_one_ratio.push_back(po.rate / so.rate);
                sem_one_cpa.push_back(so_cpa);
            }
            std::fprintf(stderr,
                         ", shared seq %.0f pairs/s, permits 64 threads %.0f pairs/s, redis-semaphore %.0f pairs/s, "
                         "one key %.0f/s (%.2f commands each, at most %d held at once), redis-semaphore one key "
                         "%.0f/s (%.2f commands each)",
                         sh, pd, sd.rate, po.rate, one_cpa.back(), po.peak, so.rate, so_cpa);
        }
        std::fprintf(stderr, "\n");
    }

    std::printf("## Redis backend (redis-server on loopback, started by the benchmark)\n\n");
    std::printf("| figure | measured | target | result |\n|---|---:|---:|---|\n");
    std::printf("| PING round trips/s, one blocking hiredis connection | %.0f | (baseline) | |\n", median(ping));
    if (o.locks)
        locks_part(o, r, server.port(), url, node_missing,
                   LockRounds{seq, seq_ratio, t64, node, node_ratio, ceiling, ceiling_ratio});
    if (o.modes) {
        const double shr = median(shared_ratio);
        std::printf("| one thread, lock_shared + release of distinct keys, pairs/s | %.0f | | |\n", median(shared));
        std::printf("| shared, one thread / PING round trips | %.2fx | >= 0.45x | %s |\n", shr,
                    shr >= 0.45 ? "PASS" : "FAIL");
        std::printf("| 64 threads, acquire_permits(key_i, 1, 8) + release, distinct keys, pairs/s | %.0f | | |\n",
                    median(permits));
        if (!sem.empty()) {
            const double x = median(sem_ratio);
            std::printf("| redis-semaphore, 64 loops, distinct keys, pairs/s | %.0f | | |\n", median(sem));
            std::printf("| permits, distinct keys / redis-semaphore | %.2fx | >= 1x | %s |\n", x,
                        x >= 1.0 ? "PASS" : "FAIL");
        } else {
            std::printf("| permits, distinct keys / redis-semaphore | not measured: %s | >= 1x | |\n",
                        sem_missing.empty() ? "redis-semaphore failed" : sem_missing.c_str());
        }
        std::printf("| 64 threads on ONE key, limit 8: acquisitions/s | %.0f | | |\n", median(one));
        if (!sem_one.empty()) {
            const double x = median(sem_one_ratio);
            std::printf(
                "| redis-semaphore, 64 loops on one key, limit 8 (its 10 ms polling): acquisitions/s | %.0f | | |\n",
                median(sem_one));
            std::printf("| one key / redis-semaphore | %.2fx | >= 2x | %s |\n", x, x >= 2.0 ? "PASS" : "FAIL");
            std::printf("| redis-semaphore on one key: commands per acquisition | %.2f | (peer) | |\n",
                        median(sem_one_cpa));
        } else {
            std::printf("| one key / redis-semaphore | not measured: %s | >= 2x | |\n",
                        sem_missing.empty() ? "redis-semaphore failed" : sem_missing.c_str());
        }
        const double cpa = median(one_cpa);
        std::printf("| one key, limit 8, 64 threads: Redis commands per acquisition | %.2f | <= 3 | %s |\n", cpa,
                    cpa <= 3.0 ? "PASS" : "FAIL");
        std::printf("| (extra) one key: most permits held at once by the 64 threads, any round | %d of 8 | | |\n",
                    one_peak);
    }
    return 0;
}
