// tutorial — keylock's API in one page. Every CHECK must hold; the program exits with 1 if one
// does not. (CHECK rather than assert(), which release builds compile out.)
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

int main() {
    auto registry = keylock::KeyedLockRegistry::from_url("local://");  // or from_env("KEYLOCK_URL")

    std::uint64_t token = 0;
    {
        keylock::Guard guard = registry.lock("client-42");      // waits until client-42 is ours
        token = guard.fencing_token();                           // increases with every lock of a key
        CHECK(!registry.try_lock_for("client-42", 10ms));        // taken: gives up after 10 ms
        CHECK(registry.try_lock("client-43"));                   // other keys are not blocked
    }                                                            // released here

    std::optional<keylock::Guard> again = registry.try_lock_for("client-42", 1s);
    CHECK(again && again->fencing_token() > token);
    again.reset();                                               // release

    int balance = registry.with_lock("account-7", [] { return 100; });  // lock, run, release
    CHECK(balance == 100);

    std::map<std::string, int> clients;                          // stands in for a database
    auto find = [&]() -> std::optional<int> {
        if (auto it = clients.find("client-42"); it != clients.end()) return it->second;
        return std::nullopt;
    };
    auto create = [&] { return clients["client-42"] = static_cast<int>(clients.size()) + 1; };
    int first = registry.get_or_create("client-42", find, create);   // not found: created
    int second = registry.get_or_create("client-42", find, create);  // found: not created again
    CHECK(first == second && clients.size() == 1);

    keylock::KeyMutex mutex = registry.obtain("client-42");     // a TimedLockable handle
    {
        std::unique_lock lock(mutex);                            // works with std::unique_lock
        CHECK(lock.owns_lock() && !registry.try_lock("client-42"));
    }
    CHECK(registry.stats().entries == 1);                        // `mutex` keeps its entry alive

    std::puts("tutorial: all checks passed");
}
