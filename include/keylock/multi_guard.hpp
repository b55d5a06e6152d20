// SPDX-License-Identifier: BSL-1.0
// keylock/multi_guard.hpp — MultiGuard, the RAII ownership of several keys' locks at once
// (KeyedLockRegistry::lock_all).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <keylock/error.hpp>
#include <keylock/guard.hpp>

namespace keylock {

/// Owns the exclusive locks of several keys, all taken together by `lock_all`, until it is
/// destroyed, moved from, or `release()`d. Move-only, like Guard; the destructor releases every
/// key (in the reverse of the order they were taken) and never throws.
class MultiGuard {
public:
    /// A multi-guard that owns nothing.
    MultiGuard() noexcept = default;
    /// Takes over `other`'s keys; `other` owns nothing afterwards.
    MultiGuard(MultiGuard&&) noexcept = default;
    /// Releases this guard's keys, then takes over `other`'s.
    MultiGuard& operator=(MultiGuard&& other) noexcept {
        if (this != &other) {
            reset();
            guards_ = std::move(other.guards_);
        }
        return *this;
    }
    MultiGuard(const MultiGuard&) = delete;
    MultiGuard& operator=(const MultiGuard&) = delete;
    ~MultiGuard() { reset(); }

    /// Whether the keys are held (they may still have been `lost()`).
    bool owns_lock() const noexcept { return !guards_.empty() && guards_.front().owns_lock(); }
    /// `owns_lock()`.
    explicit operator bool() const noexcept { return owns_lock(); }

    /// One guard per key, in the order the keys were taken (their bytes, ascending).
    std::span<const Guard> guards() const noexcept { return guards_; }
    /// How many keys (0 once released).
    std::size_t size() const noexcept { return guards_.size(); }

    /// The guard of `key`, or null if `key` is not one of them.
    const Guard* find(std::string_view key) const noexcept {
        for (const Guard& g : guards_) {
            if (g.key() == key) return &g;
        }
        return nullptr;
    }
    /// The fencing token of `key`'s acquisition (see Guard::fencing_token); 0 if `key` is not
    /// one of them.
    std::uint64_t fencing_token(std::string_view key) const noexcept {
        const Guard* g = find(key);
        return g != nullptr ? g->fencing_token() : 0;
    }
    /// Whether the lease of any of the keys was lost while held.
    bool lost() const noexcept {
        return std::any_of(guards_.begin(), guards_.end(), [](const Guard& g) { return g.lost(); });
    }

    /// Releases every key now, in the reverse of the order they were taken. Throws
    /// keylock::Error with the first error (`not_held` if nothing is held, `not_owner` if a lock
    /// turned out to be someone else's); every key is released whatever the others' outcome.
    void release() {
        std::error_code ec;
        release(ec);
        if (ec) detail::throw_error(ec, {}, "release");
    }
    /// As `release()`, reporting the first error through `ec`.
    void release(std::error_code& ec) noexcept {
        ec.clear();
        if (!owns_lock()) ec = errc::not_held;
        while (!guards_.empty()) {  // the last taken goes first
            std::error_code one;
            if (guards_.back().owns_lock()) guards_.back().release(one);
            if (one && !ec) ec = one;
            guards_.pop_back();
        }
        guards_.clear();
    }

private:
    friend class KeyedLockRegistry;
    explicit MultiGuard(std::vector<Guard> guards) noexcept : guards_(std::move(guards)) {}

    void reset() noexcept {
        while (!guards_.empty()) guards_.pop_back();  // the last taken goes first
    }

    std::vector<Guard> guards_;
};

}  // namespace keylock
