// SPDX-License-Identifier: BSL-1.0
// The conformance suite: the promises of docs/semantics.md ("Promises every backend keeps" and
// the model table), written once and run against every backend in `backends` below.
//
// Each promise is a function of the backend, registered with CONFORMANCE_PROMISE; it becomes one
// Catch2 test case per backend, named "<scheme>:// <promise>" and tagged [conformance][<scheme>],
// so CTest lists, runs (in parallel, with -j) and reports each pair on its own.
//
// How to add a backend (postgres://, file://, etcd://, ...): add one row to `backends`:
//
//   1. `scheme`: the URL scheme; it names the backend's tests.
//   2. `url`: a function returning a registry URL for the backend with the given query options
//      (`max_key_bytes=16`; empty for none). On its first call it starts whatever the backend
//      needs (a server on loopback, a temporary directory) and keeps it for the rest of the test
//      process (a function-local static, see redis_url()); it must throw, never skip, if that
//      fails. Its first argument, `ns`, is a fresh name (letters, digits and '-') for each test:
//      registries made with one ns must share their locks, and those of different ns must never
//      meet (a key prefix, a schema, a directory), so tests sharing a deployment stay apart.
//   3. The capabilities, each true or false (never a silent skip): `scope` (whether the locks are
//      shared by every registry of the URL, in any process, or live in one registry object and
//      its copies), `operator_tools` (force_release() works, or throws `not_supported`;
//      inspect() works on every backend), `modes` (shared, upgrade and permit holds work, or answer
//      `not_supported`). A promise that needs a capability is not registered for a backend
//      without it; the rest check the backend's documented answer instead.
//   4. Link the backend into keylock_conformance_tests (tests/CMakeLists.txt) if it is not part
//      of keylock::redis.
//
// The backend is done when `ctest -L conformance` passes in the release, asan and tsan presets.
#pragma once

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <keylock/keylock.hpp>
#include <keylock/testing.hpp>

#include "tests/redis_server.hpp"
#include "tests/topology.hpp"

namespace keylock::conformance {

/// Who shares a backend's locks.
enum class Scope {
    registry,  ///< one registry object and its copies, inside one process (local://)
    server,    ///< every registry made from the URL, in any process (a lock server)
};

/// One backend under test: how to reach it and what it can do.
struct Backend {
    std::string_view scheme;
    std::string (*url)(std::string_view ns, std::string_view query);
    Scope scope;
    bool operator_tools;
    bool modes;  ///< shared, upgrade and permit holds (else they answer `not_supported`)
};

/// "?query", or nothing for an empty query.
inline std::string query_part(std::string_view query) { return query.empty() ? "" : "?" + std::string(query); }

/// The options that keep one test's locks apart from another's on a shared Redis deployment.
inline std::string redis_query(std::string_view ns, std::string_view query) {
    std::string q = "prefix=kc-" + std::string(ns) + ":";
    if (!query.empty()) q += "&" + std::string(query);
    return q;
}

inline std::string local_url(std::string_view /*ns*/, std::string_view query) { return "local://" + query_part(query); }

// sim://: a Simulation per test, named after its ns, alive for the rest of the test process.
inline std::string sim_url(std::string_view ns, std::string_view query) {
    static std::mutex mu;
    static std::vector<std::unique_ptr<testing::Simulation>> live;
    std::lock_guard lk(mu);
    live.push_back(std::make_unique<testing::Simulation>(testing::SimulationOptions{"conformance-" + std::string(ns)}));
    return live.back()->url() + query_part(query);
}

// The deployments: started on first use, shared by every test of the process, stopped at exit.
// Start them from the test's own thread (Context does): a server dies with the thread that
// started it (PR_SET_PDEATHSIG).
inline std::string redis_url(std::string_view ns, std::string_view query) {
    static const test::RedisServer server;
    return test::url(server, redis_query(ns, query));
}
// One replica and one sentinel: the promises are the master's, and a deployment whose sentinels
// must first find each other takes seconds longer to start (several sentinels and failovers are
// tests/test_sentinel.cpp's subject).
inline std::string sentinel_url(std::string_view ns, std::string_view query) {
    static const test::SentinelDeployment deployment(1, 1);
    return deployment.url(redis_query(ns, query));
}
// Three masters, so that keys land on different nodes; no replicas, which only failovers need.
inline std::string cluster_url(std::string_view ns, std::string_view query) {
    static const test::ClusterDeployment deployment(3, 0);
    return deployment.url(redis_query(ns, query));
}
inline std::string redlock_url(std::string_view ns, std::string_view query) {
    static const test::RedlockDeployment deployment(5);
    return deployment.url(redis_query(ns, query));
}

// clang-format off
inline constexpr Backend backends[] = {
    // scheme            url           scope            operator_tools modes
    {"local",            local_url,    Scope::registry, false,         true},
    {"sim",              sim_url,      Scope::registry, false,         true},
    {"redis",            redis_url,    Scope::server,   true,          true},
    {"redis+sentinel",   sentinel_url, Scope::server,   true,          true},
    {"redis+cluster",    cluster_url,  Scope::server,   true,          true},
    {"redlock",          redlock_url,  Scope::server,   true,          false},
};
// clang-format on

/// The registries of one test case. All registries of a context share their locks: for a
/// Scope::server backend each is made anew from the URL (as another process would), for a
/// Scope::registry backend each is a copy of the context's one registry.
class Context {
public:
    explicit Context(const Backend& backend, std::string_view query = "")
        : backend_(backend), url_(backend.url(next_ns(), query)) {
        if (backend.scope == Scope::registry) shared_ = KeyedLockRegistry::from_url(url_);
    }

    const Backend& backend() const noexcept { return backend_; }
    /// The URL every registry of this context is made from.
    const std::string& url() const noexcept { return url_; }
    /// Another registry sharing this context's locks.
    KeyedLockRegistry registry() const { return shared_ ? *shared_ : KeyedLockRegistry::from_url(url_); }

private:
    static std::string next_ns() {
        static std::atomic<int> n{0};
        return std::to_string(++n);
    }

    const Backend& backend_;
    std::string url_;
    std::optional<KeyedLockRegistry> shared_;  // Scope::registry: the one registry
};

/// A promise: checks one backend.
using Promise = void (*)(const Backend&);

/// Which backends a promise applies to.
using Applies = bool (*)(const Backend&);
inline bool every_backend(const Backend& /*backend*/) { return true; }
/// Backends with shared, upgrade and permit holds, and those without.
inline bool has_modes(const Backend& backend) { return backend.modes; }
inline bool lacks_modes(const Backend& backend) { return !backend.modes; }
/// Backends whose locks exclude between processes.
inline bool shared_across_processes(const Backend& backend) { return backend.scope == Scope::server; }

/// Registers `promise` as one test case per backend it applies to.
class Registrar {
public:
    Registrar(Promise promise, const char* name, Applies applies, const char* file, std::size_t line) {
        for (const Backend& backend : backends) {
            if (!applies(backend)) continue;
            const std::string scheme(backend.scheme);
            // AutoReg copies the name and tags; Catch2 owns the invoker.
            const Catch::AutoReg registered(
                new Invoker(promise, backend), Catch::SourceLineInfo(file, line), Catch::StringRef(),
                Catch::NameAndTags(scheme + ":// " + name, "[conformance][" + scheme + "]"));
        }
    }

private:
    class Invoker final : public Catch::ITestInvoker {
    public:
        Invoker(Promise promise, const Backend& backend) : promise_(promise), backend_(backend) {}
        void invoke() const override { promise_(backend_); }

    private:
        Promise promise_;
        const Backend& backend_;
    };
};

/// Whether `name` can be a CTest test name: CTest takes a ';' for a list separator.
constexpr bool valid_test_name(std::string_view name) {
    return !name.empty() && name.find(';') == std::string_view::npos;
}

/// The keylock error a call throws (errc{} if it throws none).
template <class Fn>
errc error_of(Fn&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return static_cast<errc>(e.code().value());
    }
    return errc{};
}

}  // namespace keylock::conformance

#define CONFORMANCE_CONCAT2(a, b) a##b
#define CONFORMANCE_CONCAT(a, b) CONFORMANCE_CONCAT2(a, b)
#define CONFORMANCE_UNIQUE(name) CONFORMANCE_CONCAT(name, __LINE__)

/// Defines a promise checked on every backend for which `applies(backend)` holds:
///
///     CONFORMANCE_PROMISE("try_lock on a held key fails at once", every_backend) {
///         Context c(backend);
///         ...
///     }
#define CONFORMANCE_PROMISE(name, applies)                                                          \
    static_assert(keylock::conformance::valid_test_name(name), "a test name must not contain ';'"); \
    static void CONFORMANCE_UNIQUE(conformance_promise_)(const keylock::conformance::Backend&);     \
    static const keylock::conformance::Registrar CONFORMANCE_UNIQUE(conformance_registrar_)(        \
        &CONFORMANCE_UNIQUE(conformance_promise_), (name), (applies), __FILE__, __LINE__);          \
    static void CONFORMANCE_UNIQUE(conformance_promise_)([[maybe_unused]] const keylock::conformance::Backend& backend)
