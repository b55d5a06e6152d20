// SPDX-License-Identifier: BSL-1.0
// transfer — money transfers between accounts, each under lock_all({from, to}): both accounts
// or neither.
//
// Six threads move money between four accounts in both directions at once. Locking `from` and
// then `to` by hand would deadlock (one thread holds A and waits for B, another holds B and
// waits for A); lock_all takes the keys in one order for every caller, so it cannot. Each
// account also keeps the fencing token of its last write and refuses an older one, as a store
// would. The region between the snippet markers is the sample of docs/modes.md. Usage:
// transfer [URL] (default local://; lock_all works on every backend); exits with 1 if a check
// fails.
#include <keylock/keylock.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#define CHECK(cond) \
    ((cond) ? void() : (std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), std::exit(1)))

using namespace std::chrono_literals;

namespace {

// A store of accounts. Atomics so that a transfer that ran without its locks shows up as money
// made or lost (an update overwritten) rather than as undefined behaviour.
struct Account {
    std::atomic<long> balance{1000};
    std::atomic<std::uint64_t> fence{0};  // the fencing token of the last write accepted
};
const std::array<std::string, 4> names = {"account-0", "account-1", "account-2", "account-3"};
std::array<Account, 4> accounts;

// A write carries the writer's fencing token for the account; the store takes only a larger one.
void write(std::size_t account, long balance, std::uint64_t token) {
    CHECK(token > accounts[account].fence.load());  // a stale writer would be refused here
    accounts[account].fence = token;
    accounts[account].balance = balance;
}

void transfers(keylock::KeyedLockRegistry& registry, unsigned seed, int& done) {
    std::mt19937 random(seed);
    for (int i = 0; i < 200; ++i) {
        const std::size_t from = random() % 4, to = (from + 1 + random() % 3) % 4;  // never from == to
        const long amount = 1 + static_cast<long>(random() % 50);
        const std::string& from_key = names[from];
        const std::string& to_key = names[to];
        // [snippet transfer]
        keylock::MultiGuard both = registry.lock_all({from_key, to_key});  // in any order: no deadlock
        const long from_balance = accounts[from].balance.load();
        const long to_balance = accounts[to].balance.load();
        if (from_balance < amount) continue;  // no overdraft; `both` is released here too
        std::this_thread::yield();            // another transfer now would overwrite ours
        write(from, from_balance - amount, both.fencing_token(from_key));
        write(to, to_balance + amount, both.fencing_token(to_key));
        // [/snippet transfer]
        ++done;
    }
}

}  // namespace

int main(int argc, char** argv) {
    const std::string url = argc > 1 ? argv[1] : "local://";
    try {
        auto registry = keylock::KeyedLockRegistry::from_url(url);
        std::vector<int> done(6, 0);
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < done.size(); ++t) {
            threads.emplace_back(transfers, std::ref(registry), t + 1, std::ref(done[t]));
        }
        for (auto& t : threads) t.join();  // a deadlock would hang here (CTest's timeout: 60 s)

        long total = 0;
        for (const Account& a : accounts) {
            CHECK(a.balance.load() >= 0);
            total += a.balance.load();
        }
        CHECK(total == 4000);  // money moved, none made or lost
        int moved = 0;
        for (int n : done) moved += n;
        CHECK(moved > 0);

        // All or nothing: with account-1 held elsewhere, lock_all gives up by its deadline and
        // keeps nothing, not even account-0, which it could have had. (try_lock_for, not
        // try_lock: on Redis that release is queued, and account-0 is free a round trip later.)
        const std::array<std::string_view, 2> pair = {"account-0", "account-1"};
        {
            keylock::Guard busy = registry.lock("account-1");
            CHECK(!registry.try_lock_all_for(pair, 20ms).has_value());
            CHECK(registry.try_lock_for("account-0", 1s).has_value());
        }
        auto both = registry.try_lock_all_for(pair, 1s);
        CHECK(both && both->size() == 2 && both->fencing_token("account-1") > 0);
        both.reset();
        bool rejected = false;  // a key twice is a caller's mistake, not a wait
        try {
            (void)registry.lock_all({"account-0", "account-0"});
        } catch (const keylock::Error& e) {
            rejected = e.code() == keylock::errc::invalid_argument;
        }
        CHECK(rejected);
        std::printf("transfer: %d transfers on %s, total %ld; all checks passed\n", moved, url.c_str(), total);
    } catch (const keylock::Error& e) {
        std::fprintf(stderr, "transfer: %s\n", e.what());
        return 1;
    }
}
