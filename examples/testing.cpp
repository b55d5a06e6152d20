// SPDX-License-Identifier: BSL-1.0
// testing — unit-testing code that uses keylock for what happens when things go wrong: a lease
// lost during the work, a lock server that cannot be reached, a wait that times out. No Redis:
// keylock::testing::Simulation (keylock/testing.hpp) is a lock store whose faults the test sets
// off. The regions between the snippet markers are the samples of docs/testing.md. Exits with 1
// if a check fails.
#include <keylock/keylock.hpp>
#include <keylock/testing.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

#define CHECK(cond) \
    ((cond) ? void() : (std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), std::exit(1)))

using namespace std::chrono_literals;

namespace {

// [snippet code]
// The code under test: opens an account once per client. The store keeps, per client, the
// highest fencing token it has accepted, and refuses a write that brings a smaller one.
struct Accounts {
    std::map<std::string, int> opened;            // client -> account number
    std::map<std::string, std::uint64_t> fences;  // client -> the last fencing token accepted

    std::optional<int> find(const std::string& client) const {
        auto it = opened.find(client);
        return it == opened.end() ? std::nullopt : std::optional<int>(it->second);
    }
    bool insert(const std::string& client, int number, std::uint64_t token) {
        if (token <= fences[client]) return false;  // a newer holder of the lock wrote since
        fences[client] = token;
        opened[client] = number;
        return true;
    }
};

struct LockLost : std::runtime_error {
    LockLost() : std::runtime_error("the lock was lost before the account was written") {}
};

int open_account(keylock::KeyedLockRegistry& locks, Accounts& accounts, const std::string& client,
                 const std::function<int()>& call_bank) {
    return locks.get_or_create(
        client, [&] { return accounts.find(client); },
        [&](keylock::Guard& guard) {
            const int number = call_bank();            // slow: the lease may end meanwhile
            if (guard.lost()) throw LockLost();         // do not write under a lost lock
            if (!accounts.insert(client, number, guard.fencing_token())) throw LockLost();
            return number;
        });
}
// [/snippet code]

}  // namespace

int main() {
    // [snippet test]
    keylock::testing::Simulation sim;  // sim://default while it lives
    auto locks = sim.registry();
    Accounts accounts;

    // The lease ends while the bank is called: nothing is written, the caller learns it.
    bool thrown = false;
    try {
        open_account(locks, accounts, "client-1", [&] {
            sim.lose("client-1");  // as if the holder paused past its lease
            return 101;
        });
    } catch (const LockLost&) {
        thrown = true;
    }
    CHECK(thrown && !accounts.find("client-1"));
    CHECK(locks.stats().lost == 1);

    // The lock server cannot be reached: keylock::Error with errc::unavailable, nothing written.
    sim.fail_next("client-1", keylock::errc::unavailable);
    try {
        open_account(locks, accounts, "client-1", [] { return 102; });
        CHECK(false);
    } catch (const keylock::Error& e) {
        CHECK(e.code() == keylock::errc::unavailable);
    }

    // Then it works, once.
    CHECK(open_account(locks, accounts, "client-1", [] { return 103; }) == 103);
    CHECK(open_account(locks, accounts, "client-1", [] { return 104; }) == 103);
    // [/snippet test]

    // A wait that runs out: the next attempt times out as if the key stayed held.
    sim.fail_next("client-2", keylock::errc::timeout);
    CHECK(!locks.try_lock_for("client-2", 1s));
    std::puts("testing: ok");
    return 0;
}
