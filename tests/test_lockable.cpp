// SPDX-License-Identifier: BSL-1.0
// KeyMutex against the lockable concepts: the standard's (TimedLockable, and what
// std::shared_lock needs) and Boost.Thread's SharedLockable and UpgradeLockable, checked at
// compile time with boost/thread/lockable_concepts.hpp and then used through the standard's and
// Boost's lock types on a local registry.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include <boost/thread/lock_types.hpp>
#include <boost/thread/lockable_concepts.hpp>

#include <keylock/keylock.hpp>

#include "eventually.hpp"

using keylock::KeyedLockRegistry;
using keylock::KeyMutex;
using namespace std::chrono_literals;

BOOST_CONCEPT_ASSERT((boost::TimedLockable<KeyMutex>));
BOOST_CONCEPT_ASSERT((boost::SharedLockable<KeyMutex>));
BOOST_CONCEPT_ASSERT((boost::UpgradeLockable<KeyMutex>));

TEST_CASE("std::shared_lock and std::unique_lock share a KeyMutex as they would a std::shared_mutex", "[lockable]") {
    KeyedLockRegistry r;
    KeyMutex m = r.obtain("k");
    KeyMutex other = r.obtain("k");
    {
        std::shared_lock a(m);
        std::shared_lock b(m);  // two shared holds through one handle
        CHECK(other.try_lock_shared());
        other.unlock_shared();
        CHECK_FALSE(other.try_lock());
        CHECK_FALSE(other.try_lock_for(20ms));
    }
    {
        std::unique_lock w(m);
        CHECK_FALSE(other.try_lock_shared());
        CHECK_FALSE(other.try_lock_shared_for(20ms));
    }
    CHECK(other.try_lock());
    other.unlock();
}

TEST_CASE("boost::upgrade_lock and boost::upgrade_to_unique_lock upgrade a KeyMutex in place", "[lockable]") {
    KeyedLockRegistry r;
    KeyMutex m = r.obtain("k");
    KeyMutex reader = r.obtain("k");
    boost::upgrade_lock<KeyMutex> up(m);
    REQUIRE(up.owns_lock());
    CHECK_FALSE(reader.try_lock_upgrade());  // one upgrade holder
    REQUIRE(reader.try_lock_shared());       // readers beside it
    std::atomic<bool> unique{false};
    std::uint64_t token = 0;  // checked here, not in the thread: Catch2's assertions are one thread's
    auto writer = std::async(std::launch::async, [&] {
        boost::upgrade_to_unique_lock<KeyMutex> w(up);  // waits for the reader
        unique = true;
        token = m.fencing_token();
    });
    REQUIRE(keylock::test::eventually([&] { return r.stats().waiting == 1; }));
    CHECK_FALSE(unique);
    reader.unlock_shared();
    writer.get();
    CHECK(unique);
    CHECK(token > 0);
    // Back to upgrade ownership when the unique lock went: readers may come in again.
    CHECK(reader.try_lock_shared());
    reader.unlock_shared();
}

TEST_CASE("KeyMutex conversions: shared to upgrade and exclusive, and the downgrades", "[lockable]") {
    KeyedLockRegistry r;
    KeyMutex m = r.obtain("k");
    KeyMutex other = r.obtain("k");
    m.lock_shared();
    REQUIRE(m.try_unlock_shared_and_lock_upgrade());
    CHECK_FALSE(other.try_lock_upgrade());
    REQUIRE(m.try_unlock_upgrade_and_lock_for(1s));
    CHECK_FALSE(other.try_lock_shared());
    m.unlock_and_lock_shared();
    CHECK(other.try_lock_upgrade());
    other.unlock_upgrade();
    REQUIRE(m.try_unlock_shared_and_lock());
    m.unlock_and_lock_upgrade();
    CHECK(other.try_lock_shared());
    CHECK_FALSE(m.try_unlock_upgrade_and_lock());  // other reads
    m.unlock_upgrade_and_lock_shared();
    CHECK_FALSE(m.try_unlock_shared_and_lock_for(20ms));  // two readers
    other.unlock_shared();
    CHECK(m.try_unlock_shared_and_lock());
    m.unlock();
    CHECK(r.stats().waiting == 0);
    CHECK(other.try_lock());
    other.unlock();
}
