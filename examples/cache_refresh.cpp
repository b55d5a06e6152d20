// SPDX-License-Identifier: BSL-1.0
// cache_refresh — a read-mostly cache entry: many readers under lock_shared, and refreshers that
// check staleness under lock_upgrade (readers go on meanwhile) and upgrade() only to write.
//
// Two would-be writers that both read first never deadlock: only one thread at a time has
// upgrade ownership, so the second refresher waits in lock_upgrade(), not in upgrade(). The end
// shows the same with Boost.Thread's lock types on a KeyMutex handle. The regions between the
// snippet markers are the samples of docs/modes.md. Usage: cache_refresh [URL] (default
// local://); exits with 1 if a check fails.
#include <boost/thread/lock_types.hpp>

#include <keylock/keylock.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#define CHECK(cond) \
    ((cond) ? void() : (std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), std::exit(1)))

using namespace std::chrono_literals;

namespace {

// The cached entry. A writer stores `version`, then `copy`; a reader that ever sees them differ
// has read a half-written entry (atomics, so that such a bug is seen rather than undefined).
struct Entry {
    std::atomic<long> version{0}, copy{0};
};
Entry cache;
std::atomic<long> source{0};         // the database's version of the entry
std::atomic<int> readers_inside{0};  // readers between their lock and their unlock now
std::atomic<bool> done{false};

void read_entry() {
    ++readers_inside;
    CHECK(cache.version.load() == cache.copy.load());  // never a half-written entry
    std::this_thread::sleep_for(20us);                 // using the entry
    --readers_inside;
}

void write_entry(long fresh) {
    CHECK(readers_inside == 0);  // no reader beside a writer
    cache.version = fresh;
    std::this_thread::sleep_for(50us);  // a reader now would see a half-written entry
    cache.copy = fresh;
}

long fetch() {  // the slow read from the database
    std::this_thread::sleep_for(200us);
    return source.load();
}

void reader(keylock::KeyedLockRegistry& registry, long& reads) {
    do {
        // [snippet read]
        keylock::Guard guard = registry.lock_shared("config");  // any number of readers at once
        read_entry();
        // [/snippet read]
        ++reads;
    } while (!done);
}

void refresher(keylock::KeyedLockRegistry& registry, long& refreshes) {
    for (int round = 0; round < 50; ++round) {
        ++source;  // the database changed: the cached entry is stale
        // [snippet refresh]
        keylock::Guard guard = registry.lock_upgrade("config");  // one upgrader; readers go on
        if (cache.version.load() == source.load()) continue;     // fresh: another refresher did it
        const long fresh = fetch();                              // slow; readers still read
        const std::uint64_t token = guard.fencing_token();
        guard.upgrade();     // waits for the readers to leave (new ones queue behind it)
        write_entry(fresh);  // exclusive now, with a new, larger fencing token
        CHECK(guard.fencing_token() > token);
        // [/snippet refresh]
        ++refreshes;
    }
}

void with_boost(keylock::KeyedLockRegistry& registry) {
    keylock::KeyMutex mutex = registry.obtain("config");  // SharedLockable, UpgradeLockable
    ++source;
    // [snippet boost]
    boost::upgrade_lock<keylock::KeyMutex> read(mutex);  // upgrade ownership: readers may join
    if (cache.version.load() != source.load()) {
        boost::upgrade_to_unique_lock<keylock::KeyMutex> write(read);  // exclusive, in place
        write_entry(source.load());
    }  // back to upgrade ownership here; `read` releases it at the end of its scope
    // [/snippet boost]
    CHECK(registry.try_lock_shared("config").has_value());  // a reader gets in beside `read`
    CHECK(!registry.try_lock("config"));                    // a writer does not
}

}  // namespace

int main(int argc, char** argv) {
    const std::string url = argc > 1 ? argv[1] : "local://";
    try {
        auto registry = keylock::KeyedLockRegistry::from_url(url);
        {  // Readers get in beside an upgrade holder; a second upgrader does not.
            keylock::Guard up = registry.lock_upgrade("config");
            CHECK(registry.try_lock_shared_for("config", 1s).has_value());
            CHECK(!registry.try_lock_upgrade("config"));
        }
        std::vector<long> reads(3, 0), refreshes(2, 0);
        std::vector<std::thread> readers, refreshers;
        for (long& n : reads) readers.emplace_back(reader, std::ref(registry), std::ref(n));
        for (long& n : refreshes) refreshers.emplace_back(refresher, std::ref(registry), std::ref(n));
        for (auto& t : refreshers) t.join();
        done = true;
        for (auto& t : readers) t.join();
        CHECK(cache.version.load() == source.load());  // the last change was refreshed
        with_boost(registry);
        CHECK(cache.version.load() == source.load() && cache.copy.load() == source.load());
        std::printf("cache_refresh: %ld reads, %ld refreshes for %ld changes on %s; all checks passed\n",
                    reads[0] + reads[1] + reads[2], refreshes[0] + refreshes[1], source.load(), url.c_str());
    } catch (const keylock::Error& e) {  // e.g. not_supported: the backend has no shared holds yet
        std::fprintf(stderr, "cache_refresh: %s\n", e.what());
        return 1;
    }
}
