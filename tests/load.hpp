// SPDX-License-Identifier: BSL-1.0
// Load for fault tests: threads of several registries lock a few keys over and over through a
// fault, every hold recorded in the mutual-exclusion checker (exclusion_checker.hpp).
#pragma once

#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <keylock/keylock.hpp>

#include "eventually.hpp"
#include "exclusion_checker.hpp"
#include "redis_server.hpp"

namespace keylock::test {

/// Runs `f` and returns the code and message of the keylock::Error it throws ({errc{}, ""} if none).
template <class F>
std::pair<keylock::errc, std::string> error_of(F&& f) {
    try {
        f();
    } catch (const keylock::Error& e) {
        return {static_cast<keylock::errc>(e.code().value()), e.what()};
    }
    return {keylock::errc{}, {}};
}

/// Threads of several registries lock a few keys over and over, holding each lock a little,
/// until told to stop; every hold goes to the checker, every error is counted by its code.
class Load {
public:
    Load(const RedisServer& server, ExclusionChecker& checker, const std::string& query)
        : Load(server.port(), checker, query) {}
    /// Through whatever listens on `port` (e.g. a TcpProxy).
    Load(int port, ExclusionChecker& checker, const std::string& query, int registries = 3, int threads_each = 4,
         int keys = 3)
        : Load(Url{url(port, query)}, checker, registries, threads_each, keys) {}
    /// Any registry URL (e.g. redis+sentinel://…). The keys are `key_prefix` followed by 0 to
    /// `keys` - 1 (key(i)).
    struct Url {
        std::string text;
    };
    Load(const Url& u, ExclusionChecker& checker, int registries = 3, int threads_each = 4, int keys = 3,
         std::string key_prefix = "fault-")
        : checker_(checker),
          key_prefix_(std::move(key_prefix)),
          keys_(keys),
          key_holds_(std::make_unique<std::atomic<long>[]>(static_cast<std::size_t>(keys))) {
        for (int i = 0; i < registries; ++i) regs_.push_back(keylock::KeyedLockRegistry::from_url(u.text));
        for (int t = 0; t < registries * threads_each; ++t) {
            threads_.emplace_back([this, t, keys] {
                keylock::KeyedLockRegistry& r = regs_[static_cast<std::size_t>(t) % regs_.size()];
                for (int n = 0; !stop_.load(); ++n) {
                    const int k = (t + n) % keys;
                    const std::string key = this->key(k);
                    try {
                        auto g = r.try_lock_for(key, std::chrono::milliseconds(200));
                        if (!g) continue;
                        const auto start = ExclusionChecker::now_ns();
                        std::this_thread::sleep_for(std::chrono::milliseconds(2));
                        const auto end = ExclusionChecker::now_ns();
                        const bool lost = g->lost();
                        std::error_code ec;
                        g->release(ec);
                        // A release that finds the lock gone means it was lost some time during
                        // the hold: then the hold may overlap the next one's.
                        checker_.record(key, g->fencing_token(), start, end, lost || ec == keylock::errc::not_owner);
                        if (ec) errors_[static_cast<std::size_t>(ec.value()) % errors_.size()].fetch_add(1);
                        holds_.fetch_add(1);
                        key_holds_[static_cast<std::size_t>(k)].fetch_add(1);
                    } catch (const keylock::Error& e) {
                        errors_[static_cast<std::size_t>(e.code().value()) % errors_.size()].fetch_add(1);
                        std::this_thread::sleep_for(std::chrono::milliseconds(10));
                    }
                }
            });
        }
    }
    Load(const Load&) = delete;
    Load& operator=(const Load&) = delete;
    ~Load() { finish(); }

    void finish() {
        stop_ = true;
        for (auto& t : threads_) {
            if (t.joinable()) t.join();
        }
    }
    long holds() const { return holds_.load(); }
    /// The holds of key(i) so far.
    long holds_of(int i) const { return key_holds_[static_cast<std::size_t>(i)].load(); }
    /// The i-th key the load locks.
    std::string key(int i) const { return key_prefix_ + std::to_string(i); }
    int keys() const { return keys_; }
    long errors(keylock::errc e) const { return errors_[static_cast<std::size_t>(e)].load(); }
    /// Every error code's count, for failure messages ("backend unavailable: 3; ...").
    std::string error_summary() const {
        std::string s;
        for (keylock::errc e : {keylock::errc::unavailable, keylock::errc::not_owner, keylock::errc::timeout,
                                keylock::errc::backend_error, keylock::errc::protocol_error, keylock::errc::lock_lost,
                                keylock::errc::cancelled}) {
            s += keylock::make_error_code(e).message() + ": " + std::to_string(errors(e)) + "; ";
        }
        return s;
    }
    long errors_other_than(std::initializer_list<keylock::errc> allowed) const {
        long n = 0;
        for (std::size_t i = 0; i < errors_.size(); ++i) {
            bool ok = false;
            for (keylock::errc e : allowed) ok = ok || static_cast<std::size_t>(e) == i;
            if (!ok) n += errors_[i].load();
        }
        return n;
    }
    std::vector<keylock::KeyedLockRegistry>& registries() { return regs_; }

private:
    ExclusionChecker& checker_;
    std::string key_prefix_;
    int keys_;
    std::unique_ptr<std::atomic<long>[]> key_holds_;
    std::vector<keylock::KeyedLockRegistry> regs_;
    std::vector<std::thread> threads_;
    std::atomic<bool> stop_{false};
    std::atomic<long> holds_{0};
    std::array<std::atomic<long>, 32> errors_{};
};

/// Holds go on before and after `fault`: waits until `before` holds happened, runs it, then
/// waits for `after` more.
inline void around(Load& load, long before, const std::function<void()>& fault, long after) {
    REQUIRE(eventually([&] { return load.holds() >= before; }, std::chrono::seconds(20)));
    fault();
    const long at = load.holds();
    CHECK(eventually([&] { return load.holds() >= at + after; }, std::chrono::seconds(20)));
}

/// Every key of the load is held again within `within` from now: no key is left to a lock
/// nobody owns (which, at the default 30 s lease, would keep it for up to 30 s).
inline void every_key_again(const Load& load, std::chrono::milliseconds within) {
    std::vector<long> before;
    for (int i = 0; i < load.keys(); ++i) before.push_back(load.holds_of(i));
    for (int i = 0; i < load.keys(); ++i) {
        INFO("key " << load.key(i));
        CHECK(eventually([&] { return load.holds_of(i) > before[static_cast<std::size_t>(i)]; }, within));
    }
}

inline void check_exclusion(const ExclusionChecker& checker) {
    const auto problems = checker.check();
    for (const auto& p : problems) FAIL_CHECK(p);
    CHECK(problems.empty());
}

}  // namespace keylock::test
