// SPDX-License-Identifier: BSL-1.0
// keylock/testing.hpp — a simulated lock store for testing code that uses keylock: the local
// backend's entry table behind a scripted store whose faults a test sets off (a lease lost now,
// the next acquisition failing or timing out, the store down, grants delayed) and whose lease
// clock the test moves by hand. See docs/testing.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include <keylock/error.hpp>
#include <keylock/export.hpp>
#include <keylock/registry.hpp>

namespace keylock::testing {

namespace detail {
struct SimState;
}

/// How a Simulation is made: its name, its lease and its longest key.
struct SimulationOptions {
    /// The simulation's name: `sim://<name>` reaches it through KeyedLockRegistry::from_url
    /// while it lives. Letters, digits, '-', '_' and '.'; two live simulations may not share one.
    std::string name = "default";
    /// The simulated lease: how long the store may be down before every hold is lost (advance()).
    std::chrono::milliseconds lease{30000};
    /// The longest key accepted, as for the other backends.
    std::size_t max_key_bytes = 1024;
};

/// A simulated distributed lock store. Every registry made from it (`registry()`, or
/// `KeyedLockRegistry::from_url("sim://<name>")`) acts as a process of its own: they exclude
/// each other on the same keys, and each has its own `on_lost` handler and guards. Every mode
/// works (exclusive, shared, upgrade, permits, and the conversions between them), with the same
/// faults. Locks can be lost, as on Redis: `Guard::lost()`, `on_lost`, the guard's cancellation
/// slot and a release that reports `not_owner` all work as documented for leased backends.
///
/// Registries and guards may outlive the Simulation (they keep the store alive); its name is
/// free again once it is destroyed. All members are thread-safe.
class KEYLOCK_API Simulation {
public:
    /// Throws keylock::Error (`invalid_option`) for a bad or taken name, a lease under 1 ms or
    /// max_key_bytes of 0.
    explicit Simulation(SimulationOptions options = {});
    ~Simulation();
    Simulation(const Simulation&) = delete;
    Simulation& operator=(const Simulation&) = delete;

    /// A new registry on the simulated store (a process of its own).
    KeyedLockRegistry registry() const;
    /// `sim://<name>`.
    std::string url() const;

    // ---- faults -------------------------------------------------------------------------------

    /// The leases of every hold of `key` end now (its exclusive holder; or all its shared
    /// holders and its upgrade holder; or every permit hold): each guard turns lost(), the
    /// registry's on_lost handler (once per hold) and the guard's cancellation slot fire, each
    /// release reports `not_owner`, and the key (with all its permits) is free for others at
    /// once. A conversion (upgrade, downgrade) of a lost hold, or one waiting when the hold is
    /// lost, fails with `not_owner`. Returns false if nobody held `key`.
    bool lose(std::string_view key);

    /// The next `times` acquisitions of `key` (each try_lock, lock, timed or async wait counts
    /// once, in any mode, and so does each conversion) fail with `code` before reaching the
    /// store: `errc::timeout` makes try_* return nothing and lock() throw; `unavailable`,
    /// `backend_error`, `auth_failed` and the like are thrown by every call (async ones
    /// complete with them). An empty key means any key.
    void fail_next(std::string_view key, errc code, int times = 1);

    /// While down, every acquisition (and conversion, and inspect()) fails with `unavailable`
    /// and no lease can be renewed: holds of every mode are lost once advance() has moved the
    /// clock a lease past the moment the store went down. A release while down reports
    /// `unavailable` (Guard::release() throws it) and leaves the key held until a lease has
    /// passed on the clock, as a lock whose release never reached the store.
    void set_down(bool down);

    /// Every grant, in any mode, reaches its caller `delay` later (real time, as the callers'
    /// deadlines are). A wait whose deadline comes first ends with a timeout and the grant is
    /// given back. Conversions are not delayed. 0: none.
    void delay_grants(std::chrono::milliseconds delay);

    // ---- the lease clock ----------------------------------------------------------------------

    /// Moves the simulated lease clock forward by `d` (never back): see set_down().
    void advance(std::chrono::milliseconds d);
    /// The simulated lease clock: 0 when the simulation was made.
    std::chrono::milliseconds now() const;

    /// Holds now granted by the store, in every registry of this simulation.
    std::size_t held() const;

private:
    std::shared_ptr<detail::SimState> state_;
};

}  // namespace keylock::testing
