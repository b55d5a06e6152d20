// SPDX-License-Identifier: BSL-1.0
// tutorial — keylock's API in one page. The regions between `// [snippet NAME]` markers are the
// C++ samples of README.md and docs/configuration.md (the test docs.code_samples keeps them
// equal), so the docs show code that compiles and runs. Every CHECK must hold; the program
// exits with 1 if one does not. (CHECK rather than assert(), which release builds compile out.)
#include <keylock/keylock.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#define CHECK(cond) \
    ((cond) ? void() : (std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), std::exit(1)))

using namespace std::chrono_literals;

namespace {

struct Client {
    std::string id;
    int number = 0;
};

/// Stands in for a database table of clients. Rows inserted in a transaction (begin()) are seen
/// by others only once it commits.
struct Clients {
    std::map<std::string, Client> rows, uncommitted;
    bool in_transaction = false;
    int inserts = 0;

    std::optional<Client> find(const std::string& id) const {
        if (auto it = rows.find(id); it != rows.end()) return it->second;
        return std::nullopt;
    }
    Client insert(const std::string& id) {
        ++inserts;
        return (in_transaction ? uncommitted : rows)[id] = Client{id, inserts};
    }
    void begin() { in_transaction = true; }
    void commit() {
        rows.merge(uncommitted);
        in_transaction = false;
    }
};

void configuration() {
    // [snippet configuration]
    auto a = keylock::KeyedLockRegistry::from_url("local://?idle_ttl=30s&max_keys=100000");
    auto b = keylock::KeyedLockRegistry::from_env();          // $KEYLOCK_URL, or local:// if unset/empty
    auto c = keylock::KeyedLockRegistry::from_env("MY_LOCKS", "local://?fair=true");

    keylock::LocalOptions o;                                   // the same options in code
    o.idle_ttl = std::chrono::seconds(30);
    auto d = keylock::KeyedLockRegistry(o);
    std::string url = d.describe();                            // "local://?idle_ttl=30s"
    // [/snippet configuration]
    CHECK(url == "local://?idle_ttl=30s");
    CHECK(a.describe() == "local://?idle_ttl=30s&max_keys=100000");
    (void)b;
    (void)c;
}

}  // namespace

int main() {
    Clients db;
    // [snippet tutorial]
    auto registry = keylock::KeyedLockRegistry::from_env();      // $KEYLOCK_URL, default local://

    std::uint64_t token = 0;
    {
        keylock::Guard guard = registry.lock("client-42");        // waits until client-42 is ours
        token = guard.fencing_token();                             // grows with every lock of a key
    }                                                              // released here
    if (auto guard = registry.try_lock_for("client-42", 100ms)) {  // waits at most 100 ms
        CHECK(guard->fencing_token() > token);
    }
    int balance = registry.with_lock("account-7", [] { return 100; });  // lock, run, release

    Client client = registry.get_or_create("client-42",
        [&] { return db.find("client-42"); },    // std::optional<Client>: first without the lock
        [&] { return db.insert("client-42"); }); // then under it, at most once per id

    keylock::KeyMutex mutex = registry.obtain("client-42");       // a TimedLockable handle
    {
        std::unique_lock lock(mutex);                              // std::unique_lock, scoped_lock, ...
    }
    // [/snippet tutorial]
    CHECK(balance == 100);
    CHECK(client.id == "client-42" && db.inserts == 1);
    CHECK(registry.get_or_create("client-42", [&] { return db.find("client-42"); },
                                 [&] { return db.insert("client-42"); }).number == client.number);
    CHECK(db.inserts == 1);  // found the second time: not created again

    // [snippet transaction]
    Client paid = registry.get_or_create("client-7",
        [&] { return db.find("client-7"); },
        [&] { db.begin(); return db.insert("client-7"); },  // a transaction, under the lock
        [&] { db.commit(); });   // committed before the lock is released: the next caller finds it
    // [/snippet transaction]
    CHECK(db.find("client-7").has_value() && db.find("client-7")->number == paid.number);

    {
        keylock::Guard held = registry.lock("client-42");
        CHECK(!registry.try_lock_for("client-42", 10ms));  // taken: gives up after 10 ms
        CHECK(registry.try_lock("client-43"));             // other keys are not blocked
    }
    {
        std::unique_lock lock(mutex);
        CHECK(lock.owns_lock() && !registry.try_lock("client-42"));
    }

    configuration();
    std::puts("tutorial: all checks passed");
}
