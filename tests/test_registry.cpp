// SPDX-License-Identifier: BSL-1.0
// The registry core above the backend interface, tested against an instrumented fake backend:
// guards release exactly once, deadlines reach the backend as intended, errors map to the API.
#include <catch2/catch.hpp>

#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>

#include <keylock/keylock.hpp>

using keylock::errc;
using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::detail::Clock;
using keylock::detail::Deadline;
using namespace std::chrono_literals;

namespace {

/// A backend that grants or refuses as told and records every call.
class FakeBackend final : public keylock::detail::Backend {
public:
    struct FakeHold : keylock::detail::Hold {
        std::string key;
    };
    struct FakePin : keylock::detail::Pin {
        std::string key;
    };

    std::error_code refuse_with;      // when set, acquire fails with this
    std::error_code release_reports;  // what release reports
    std::vector<Deadline> deadlines;
    int releases = 0;
    int pins = 0;
    int unpins = 0;
    bool closed = false;
    std::uint64_t fence = 0;

    FakeBackend() : Backend(8) {}  // keys of up to 8 bytes

    std::vector<std::string> keys;  // every key that reached the backend

    keylock::detail::Acquired acquire(const keylock::detail::Request& request, std::error_code& ec) override {
        deadlines.push_back(request.deadline);
        keys.emplace_back(request.key);
        if (refuse_with) {
            ec = refuse_with;
            return {};
        }
        auto* h = new FakeHold;
        h->key = request.key;
        return {h, ++fence};
    }
    void async_acquire(const keylock::detail::Request& request, keylock::detail::AsyncWaiter* w) override {
        keys.emplace_back(request.key);
        w->complete(errc::unavailable, {});
    }
    void cancel(keylock::detail::AsyncWaiter*) noexcept override {}
    void release(keylock::detail::Hold* h, std::error_code* ec) noexcept override {
        ++releases;
        delete static_cast<FakeHold*>(h);
        if (ec != nullptr) *ec = release_reports;
    }
    std::string_view key(const keylock::detail::Hold* h) const noexcept override {
        return static_cast<const FakeHold*>(h)->key;
    }
    keylock::detail::Pin* pin(std::string_view key) override {
        ++pins;
        auto* p = new FakePin;
        p->key = std::string(key);  // not key itself: GCC 12 warns falsely (-Wrestrict) where it is inlined
        return p;
    }
    void unpin(keylock::detail::Pin* p) noexcept override {
        ++unpins;
        delete static_cast<FakePin*>(p);
    }
    std::string_view key(const keylock::detail::Pin* p) const noexcept override {
        return static_cast<const FakePin*>(p)->key;
    }
    keylock::Stats snapshot() const override { return {}; }
    std::string describe() const override { return "fake://"; }
    void close() noexcept override { closed = true; }
};

struct Fixture {
    std::shared_ptr<FakeBackend> fake = std::make_shared<FakeBackend>();
    KeyedLockRegistry registry = KeyedLockRegistry::from_backend(
        std::shared_ptr<keylock::detail::Backend>(fake.get(), [](keylock::detail::Backend* b) { b->close(); }));
};

}  // namespace

TEST_CASE("a guard releases exactly once, whatever happens to it", "[registry]") {
    Fixture f;
    {
        Guard g = f.registry.lock("k");
        CHECK(g.owns_lock());
        CHECK(g.key() == "k");
        CHECK(g.fencing_token() == 1);
        Guard moved = std::move(g);
        CHECK_FALSE(g.owns_lock());  // NOLINT(bugprone-use-after-move): documented state
        CHECK(g.key().empty());      // NOLINT(bugprone-use-after-move)
        Guard other = f.registry.lock("j");
        other = std::move(moved);  // releases "j"
        CHECK(f.fake->releases == 1);
        CHECK(other.key() == "k");
    }
    CHECK(f.fake->releases == 2);

    Guard g = f.registry.lock("k");
    g.release();
    CHECK(f.fake->releases == 3);
    CHECK(g.fencing_token() == 3);  // still readable after release
    std::error_code ec;
    g.release(ec);
    CHECK(ec == errc::not_held);
    CHECK_THROWS_AS(g.release(), keylock::Error);
    CHECK(f.fake->releases == 3);
}

TEST_CASE("release reports what the backend reports", "[registry]") {
    Fixture f;
    f.fake->release_reports = errc::not_owner;
    Guard g = f.registry.lock("k");
    try {
        g.release();
        FAIL("expected not_owner");
    } catch (const keylock::Error& e) {
        CHECK(e.code() == errc::not_owner);
    }
    CHECK_FALSE(g.owns_lock());
    Guard quiet = f.registry.lock("k");  // the destructor swallows it
}

TEST_CASE("deadlines reach the backend as asked", "[registry]") {
    Fixture f;
    (void)f.registry.lock("k");
    CHECK(f.fake->deadlines.back() == Deadline::max());

    auto before = Clock::now();
    (void)f.registry.try_lock("k");
    CHECK(f.fake->deadlines.back() >= before);
    CHECK(f.fake->deadlines.back() <= Clock::now());

    before = Clock::now();
    (void)f.registry.try_lock_for("k", 250ms);
    CHECK(f.fake->deadlines.back() >= before + 250ms);
    CHECK(f.fake->deadlines.back() <= Clock::now() + 250ms);

    (void)f.registry.try_lock_for("k", std::chrono::hours::max());
    CHECK(f.fake->deadlines.back() == Deadline::max());
    (void)f.registry.try_lock_for("k", -5s);
    CHECK(f.fake->deadlines.back() <= Clock::now());

    const auto at = Clock::now() + 1s;
    (void)f.registry.try_lock_until("k", at);
    CHECK(f.fake->deadlines.back() == at);
    before = Clock::now();
    (void)f.registry.try_lock_until("k", std::chrono::system_clock::now() + 2s);
    CHECK(f.fake->deadlines.back() >= before + 1900ms);
    CHECK(f.fake->deadlines.back() <= Clock::now() + 2s);
}

TEST_CASE("timeouts and stops are nullopt for try_*, errors otherwise throw", "[registry]") {
    Fixture f;
    f.fake->refuse_with = errc::timeout;
    CHECK_FALSE(f.registry.try_lock("k").has_value());
    CHECK_FALSE(f.registry.try_lock_for("k", 1s).has_value());
    f.fake->refuse_with = errc::cancelled;
    CHECK_FALSE(f.registry.try_lock_for("k", 1s).has_value());
    CHECK_THROWS_AS(f.registry.lock("k"), keylock::Error);
    f.fake->refuse_with = errc::key_too_long;
    CHECK_THROWS_AS(f.registry.try_lock("k"), keylock::Error);
    try {
        (void)f.registry.lock(std::string("bin\0ary\r\n", 9));
        FAIL("expected an error");
    } catch (const keylock::Error& e) {
        CHECK(e.code() == errc::key_too_long);
        CHECK(std::string(e.what()).find("'bin?ary?"
                                         "?' (9 bytes)") != std::string::npos);
    }
}

TEST_CASE("with_lock passes the guard when asked and releases on exceptions", "[registry]") {
    Fixture f;
    CHECK(f.registry.with_lock("k", [] { return 42; }) == 42);
    CHECK(f.registry.with_lock("k", [](Guard& g) { return g.fencing_token(); }) == 2);
    CHECK(f.fake->releases == 2);
    CHECK_THROWS_AS(f.registry.with_lock("k", []() -> int { throw std::runtime_error("boom"); }), std::runtime_error);
    CHECK(f.fake->releases == 3);
    int x = 0;
    int& r = f.registry.with_lock("k", [&x]() -> int& { return x; });
    CHECK(&r == &x);
}

TEST_CASE("get_or_create finds first, locks, finds again, creates once", "[registry]") {
    Fixture f;
    std::vector<std::string> calls;
    std::optional<int> stored;
    auto find = [&] {
        calls.emplace_back("find");
        return stored;
    };
    auto create = [&] {
        calls.emplace_back("create");
        stored = 7;
        return 7;
    };
    CHECK(f.registry.get_or_create("k", find, create) == 7);
    CHECK(calls == std::vector<std::string>{"find", "find", "create"});
    CHECK(f.fake->deadlines.size() == 1);
    calls.clear();
    CHECK(f.registry.get_or_create("k", find, create) == 7);
    CHECK(calls == std::vector<std::string>{"find"});
    CHECK(f.fake->deadlines.size() == 1);  // found without locking
}

namespace {
struct Client {
    int id = 0;
};
/// Whether get_or_create accepts this `find` (with a `create` of the matching result).
template <class Find, class Create>
concept GetOrCreatable = requires(KeyedLockRegistry& r, Find find, Create create) {
    r.get_or_create("k", find, create);
};
}  // namespace

// A `find` of the wrong kind, or a `create` whose result does not fit, is refused at compile
// time by a named concept (detail::FindResult, detail::CreatesFor), not deep inside the body.
static_assert(GetOrCreatable<std::optional<int> (*)(), int (*)()>);
static_assert(GetOrCreatable<Client* (*)(), Client* (*)()>);
static_assert(GetOrCreatable<std::shared_ptr<Client> (*)(), std::shared_ptr<Client> (*)(Guard&)>);
static_assert(GetOrCreatable<std::unique_ptr<Client> (*)(), std::unique_ptr<Client> (*)()>);
static_assert(!GetOrCreatable<int (*)(), int (*)()>);                    // neither optional nor pointer
static_assert(!GetOrCreatable<bool (*)(), bool (*)()>);                  // a bool says nothing of what was found
static_assert(!GetOrCreatable<std::optional<int> (*)(), Client (*)()>);  // create makes the wrong thing
static_assert(!GetOrCreatable<std::optional<int>& (*)(), int (*)()>);    // a reference to the caller's state

TEST_CASE("get_or_create takes a pointer or an optional from find, and gives create the guard", "[registry]") {
    Fixture f;
    Client stored{3};
    Client* where = nullptr;
    // A raw pointer: nullptr is "not found"; the result is the pointer.
    Client* got = f.registry.get_or_create(
        "k", [&] { return where; },
        [&](Guard& g) {
            CHECK(g.owns_lock());
            CHECK(g.key() == "k");
            CHECK(f.fake->releases == 0);  // create runs under the lock
            where = &stored;
            return where;
        });
    CHECK(got == &stored);
    CHECK(f.fake->releases == 1);
    CHECK(f.registry.get_or_create(
              "k", [&] { return where; }, []() -> Client* { return nullptr; }) == &stored);
    CHECK(f.fake->releases == 1);  // found without the lock
    // Smart pointers.
    std::shared_ptr<Client> shared;
    auto made = f.registry.get_or_create(
        "s", [&] { return shared; }, [&] { return shared = std::make_shared<Client>(Client{5}); });
    static_assert(std::is_same_v<decltype(made), std::shared_ptr<Client>>);
    CHECK(made->id == 5);
    auto owned = f.registry.get_or_create(
        "u", [] { return std::unique_ptr<Client>(); }, [] { return std::make_unique<Client>(Client{6}); });
    CHECK(owned->id == 6);
}

TEST_CASE("get_or_create with a commit: the commit runs after create, before the key is released", "[registry]") {
    Fixture f;
    std::vector<std::string> calls;
    std::optional<int> stored;
    auto find = [&] {
        calls.emplace_back("find");
        return stored;
    };
    auto create = [&] {
        calls.emplace_back("create");
        return 7;
    };
    auto commit = [&](int& created, Guard& g) {
        calls.emplace_back("commit");
        CHECK(g.owns_lock());
        CHECK(f.fake->releases == 0);  // still locked: the next caller will find the row
        stored = created;
    };
    CHECK(f.registry.get_or_create("k", find, create, commit) == 7);
    CHECK(calls == std::vector<std::string>{"find", "find", "create", "commit"});
    CHECK(f.fake->releases == 1);
    calls.clear();
    CHECK(f.registry.get_or_create("k", find, create, commit) == 7);
    CHECK(calls == std::vector<std::string>{"find"});  // found: nothing to create or commit
    // A commit that fails: the exception leaves, the lock is released on the way.
    stored.reset();
    CHECK_THROWS_AS(f.registry.get_or_create("k", find, create, [](int&) { throw std::runtime_error("rollback"); }),
                    std::runtime_error);
    CHECK(f.fake->releases == 2);
    // A commit that takes nothing.
    int commits = 0;
    CHECK(f.registry.get_or_create("k", find, create, [&] { ++commits; }) == 7);
    CHECK(commits == 1);
}

TEST_CASE("obtain pins the key until the handle goes", "[registry]") {
    Fixture f;
    {
        auto m = f.registry.obtain("k");
        CHECK(f.fake->pins == 1);
        CHECK(m.key() == "k");
        m.unlock();  // holds nothing: does nothing (std::unique_lock never calls it so)
        CHECK(f.fake->releases == 0);
        {
            std::unique_lock lk(m);
            CHECK(lk.owns_lock());
        }
        CHECK(f.fake->releases == 1);
        m.lock();  // destroyed while locked: released and unpinned
    }
    CHECK(f.fake->releases == 2);
    CHECK(f.fake->unpins == 1);
}

TEST_CASE("the backend is closed when the last registry copy goes", "[registry]") {
    auto fake = std::make_shared<FakeBackend>();
    {
        auto r = KeyedLockRegistry::from_backend(
            std::shared_ptr<keylock::detail::Backend>(fake.get(), [](keylock::detail::Backend* b) { b->close(); }));
        auto copy = r;
        { auto moved = std::move(r); }
        CHECK_FALSE(fake->closed);
        CHECK(copy.describe() == "fake://");
    }
    CHECK(fake->closed);
}

TEST_CASE("local locks can be inspected but not forced from outside: not_supported", "[registry]") {
    keylock::KeyedLockRegistry r;
    auto code_of = [](auto&& f) {
        try {
            f();
        } catch (const keylock::Error& e) {
            return e.code();
        }
        return std::error_code{};
    };
    CHECK_FALSE(r.inspect("k").held);
    {
        keylock::Guard g = r.lock("k");
        const keylock::LockInfo info = r.inspect("k");
        CHECK(info.held);
        CHECK(info.mode == keylock::LockMode::exclusive);
        CHECK(info.holders == 1);
        CHECK(info.fencing_token == 0);                    // the holder's own
        CHECK(info.ttl == std::chrono::milliseconds(-1));  // no lease
        CHECK(code_of([&] { (void)r.force_release("k"); }) == keylock::errc::not_supported);
    }
    CHECK_FALSE(r.inspect("k").held);
}

// The standard lock types call unlock() from noexcept destructors: a release that fails there
// (a lost lease, an unreachable server) must not end the program.
static_assert(noexcept(std::declval<keylock::KeyMutex&>().unlock()));

TEST_CASE("a handle's unlock never throws, whatever the backend reports", "[registry]") {
    for (const errc reported : {errc::not_owner, errc::unavailable, errc::backend_error}) {
        Fixture f;
        f.fake->release_reports = reported;
        auto m = f.registry.obtain("k");
        {
            std::unique_lock lk(m);
            CHECK(lk.owns_lock());
        }  // would std::terminate if unlock() threw
        CHECK(f.fake->releases == 1);
        {
            auto n = f.registry.obtain("j");
            std::scoped_lock both(m, n);
        }  // unlocks both
        { std::lock_guard lk(m); }
        CHECK(f.fake->releases == 4);
        m.lock();  // destroyed while locked: released without throwing
    }
}

TEST_CASE("keys are checked above the backend: bad ones never reach it", "[registry]") {
    Fixture f;
    auto code_of = [](auto&& fn) {
        try {
            fn();
        } catch (const keylock::Error& e) {
            return e.code();
        }
        return std::error_code{};
    };
    const std::string long_key(9, 'x');  // the fake backend takes up to 8 bytes
    for (const std::string& key : {std::string(), long_key}) {
        const errc expected = key.empty() ? errc::invalid_key : errc::key_too_long;
        CHECK(code_of([&] { (void)f.registry.lock(key); }) == expected);
        CHECK(code_of([&] { (void)f.registry.try_lock(key); }) == expected);
        CHECK(code_of([&] { (void)f.registry.try_lock_for(key, 1s); }) == expected);
        CHECK(code_of([&] { (void)f.registry.obtain(key); }) == expected);
        CHECK(code_of([&] { (void)f.registry.inspect(key); }) == expected);
        CHECK(code_of([&] { (void)f.registry.force_release(key); }) == expected);
        boost::asio::io_context io;
        boost::system::error_code async_code;
        f.registry.async_lock(
            key, boost::asio::bind_executor(io, [&](boost::system::error_code ec, const Guard&) { async_code = ec; }));
        io.run();
        CHECK(std::error_code(async_code) == expected);
    }
    CHECK(f.fake->keys.empty());
    CHECK(f.fake->pins == 0);
    CHECK(f.registry.try_lock(std::string(8, 'x')).has_value());  // 8 bytes: through
    CHECK(f.fake->keys.size() == 1);
}

namespace {

/// A backend whose locks can be lost and which has no blocking acquire of its own: the
/// registry's default one runs over async_acquire. A grant or a failure is given by hand, on
/// another thread, as a remote backend's I/O thread would.
class LeasedFake final : public keylock::detail::Backend {
public:
    struct FakeHold : keylock::detail::LeasedHold {
        std::string key;
    };

    LeasedFake() : Backend(64, Loss::possible) {}

    std::mutex mu;
    keylock::detail::AsyncWaiter* pending = nullptr;
    Deadline pending_deadline{};
    std::string pending_key;
    FakeHold* last = nullptr;  // the last hold granted
    bool lose_at_release = false;
    int cancels = 0;
    int releases = 0;

    void async_acquire(const keylock::detail::Request& request, keylock::detail::AsyncWaiter* w) override {
        std::lock_guard lk(mu);
        pending = w;
        pending_deadline = request.deadline;
        pending_key = std::string(request.key);
    }
    void cancel(keylock::detail::AsyncWaiter* w) noexcept override {
        std::unique_lock lk(mu);
        ++cancels;
        if (pending != w) return;
        pending = nullptr;
        lk.unlock();
        w->complete(errc::cancelled, {});
    }
    /// Completes the pending acquisition with a hold (or `ec` and `why`); false if none.
    bool answer(std::error_code ec = {}, std::string_view why = {}) {
        keylock::detail::AsyncWaiter* w = nullptr;
        std::string key;
        {
            std::lock_guard lk(mu);
            w = std::exchange(pending, nullptr);
            key = pending_key;
        }
        if (w == nullptr) return false;
        if (ec) {
            w->complete(ec, {}, why);
            return true;
        }
        auto* h = new FakeHold;
        h->key = key;
        h->fence = 7;
        last = h;
        w->complete({}, {h, 7});
        return true;
    }
    bool has_pending() {
        std::lock_guard lk(mu);
        return pending != nullptr;
    }
    void lose() { mark_lost(last); }
    void release(keylock::detail::Hold* h, std::error_code* ec) noexcept override {
        ++releases;
        if (lose_at_release) mark_lost(static_cast<FakeHold*>(h), Found::at_release);
        if (ec != nullptr) *ec = lost(h) ? make_error_code(errc::not_owner) : std::error_code{};
        delete static_cast<FakeHold*>(h);
    }
    std::string_view key(const keylock::detail::Hold* h) const noexcept override {
        return static_cast<const FakeHold*>(h)->key;
    }
    keylock::detail::Pin* pin(std::string_view) override { throw keylock::Error(errc::not_supported, "no pins"); }
    void unpin(keylock::detail::Pin*) noexcept override {}
    std::string_view key(const keylock::detail::Pin*) const noexcept override { return {}; }
    keylock::Stats snapshot() const override { return {}; }
    std::string describe() const override { return "leased-fake://"; }
    void close() noexcept override {}
};

struct LeasedFixture {
    std::shared_ptr<LeasedFake> fake = std::make_shared<LeasedFake>();
    KeyedLockRegistry registry = KeyedLockRegistry::from_backend(
        std::shared_ptr<keylock::detail::Backend>(fake.get(), [](keylock::detail::Backend* b) { b->close(); }));

    /// Answers the next acquisition once it has been asked for.
    void answer_soon(std::error_code ec = {}, const std::string& why = {}) {
        while (!fake->answer(ec, why)) std::this_thread::sleep_for(1ms);
    }
};

}  // namespace

TEST_CASE("the default blocking acquire waits for async_acquire's answer, with its deadline", "[registry][seam]") {
    LeasedFixture f;
    std::thread grant([&] { f.answer_soon(); });
    const auto before = Clock::now();
    auto g = f.registry.try_lock_for("k", 10s);
    grant.join();
    REQUIRE(g);
    CHECK(g->key() == "k");
    CHECK(g->fencing_token() == 7);
    CHECK(f.fake->pending_deadline >= before + 10s);  // the deadline reaches async_acquire
    CHECK(f.fake->cancels == 0);
}

TEST_CASE("the default blocking acquire: a stop request cancels, an error keeps the backend's words",
          "[registry][seam]") {
    LeasedFixture f;
    std::stop_source stop;
    std::thread stopper([&] {
        while (!f.fake->has_pending()) std::this_thread::sleep_for(1ms);
        stop.request_stop();
    });
    CHECK_FALSE(f.registry.try_lock_for("k", 1h, stop.get_token()).has_value());  // cancelled: nullopt
    stopper.join();
    CHECK(f.fake->cancels == 1);

    std::thread refuse([&] { f.answer_soon(errc::unavailable, "the server said no"); });
    try {
        (void)f.registry.lock("k");
        FAIL("lock() returned");
    } catch (const keylock::Error& e) {
        CHECK(e.code() == errc::unavailable);
        CHECK_THAT(e.what(), Catch::Contains("the server said no") && Catch::Contains("'k'"));
    }
    refuse.join();
}

TEST_CASE("lost-lease bookkeeping above the seam: once, to the guard's watcher and the handler, counted",
          "[registry][seam]") {
    LeasedFixture f;
    std::vector<std::pair<std::string, std::uint64_t>> told;
    f.registry.on_lost([&](std::string_view key, std::uint64_t fence) { told.emplace_back(key, fence); });
    boost::asio::io_context io;

    std::thread grant([&] { f.answer_soon(); });
    Guard g = f.registry.lock("a");
    grant.join();
    bool emitted = false;
    auto slot = g.cancellation_slot(io.get_executor());
    slot.assign([&](boost::asio::cancellation_type) { emitted = true; });
    CHECK_FALSE(g.lost());

    f.fake->lose();
    f.fake->lose();  // a second finding changes nothing
    CHECK(g.lost());
    io.run();
    CHECK(emitted);
    REQUIRE(told.size() == 1);
    CHECK(told[0] == std::pair<std::string, std::uint64_t>("a", 7));
    CHECK(f.registry.stats().lost == 1);
    std::error_code ec;
    g.release(ec);
    CHECK(ec == errc::not_owner);
}

TEST_CASE("a hold found lost only by its release is counted, and nobody is told", "[registry][seam]") {
    LeasedFixture f;
    int told = 0;
    f.registry.on_lost([&](std::string_view, std::uint64_t) { ++told; });
    boost::asio::io_context io;
    std::thread grant([&] { f.answer_soon(); });
    Guard g = f.registry.lock("a");
    grant.join();
    bool emitted = false;
    g.cancellation_slot(io.get_executor()).assign([&](boost::asio::cancellation_type) { emitted = true; });
    f.fake->lose_at_release = true;
    std::error_code ec;
    g.release(ec);
    CHECK(ec == errc::not_owner);
    io.run();
    CHECK_FALSE(emitted);  // the guard had released: its watcher was gone
    CHECK(told == 0);
    CHECK(f.registry.stats().lost == 1);
}
