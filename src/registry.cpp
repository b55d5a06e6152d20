// SPDX-License-Identifier: BSL-1.0
// The backend-independent parts of the registry: errors, construction from URLs through the
// schemes the linked backends registered.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include <keylock/keylock.hpp>
#include <keylock/version.hpp>

#include "src/config.hpp"

namespace keylock {

namespace {

class Category final : public std::error_category {
public:
    const char* name() const noexcept override { return "keylock"; }
    std::string message(int value) const override {
        switch (static_cast<errc>(value)) {
            case errc::invalid_key: return "empty key";
            case errc::key_too_long: return "key longer than max_key_bytes";
            case errc::too_many_keys: return "max_keys entries in memory already";
            case errc::timeout: return "lock not acquired before the deadline";
            case errc::cancelled: return "wait cancelled";
            case errc::not_held: return "no lock held";
            case errc::not_owner: return "lock no longer owned by this holder";
            case errc::lock_lost: return "lease lost while the lock was held";
            case errc::invalid_url: return "malformed URL";
            case errc::unknown_scheme: return "unknown URL scheme";
            case errc::unknown_option: return "unknown option";
            case errc::invalid_option: return "invalid option value";
            case errc::unavailable: return "backend unavailable";
            case errc::auth_failed: return "authentication failed";
            case errc::backend_error: return "the backend answered with an error";
            case errc::protocol_error: return "unexpected reply: not the backend's protocol";
            case errc::not_supported: return "not supported by this backend";
            case errc::mode_conflict: return "the key is in use in another mode";
            case errc::invalid_argument: return "argument out of range";
        }
        return "unknown keylock error";
    }
};

}  // namespace

Version version() noexcept {
    return {KEYLOCK_VERSION_MAJOR, KEYLOCK_VERSION_MINOR, KEYLOCK_VERSION_PATCH, KEYLOCK_VERSION_STRING};
}

const std::error_category& error_category() noexcept {
    static const Category category;
    return category;
}

namespace detail {

namespace {

struct Schemes {
    std::mutex mu;
    std::map<std::string, BackendFactory, std::less<>> factories;
};
Schemes& schemes() {
    static auto* s = new Schemes;  // never destroyed: registrations happen at static init
    return *s;
}

}  // namespace

bool register_scheme(std::string_view scheme, BackendFactory factory) {
    Schemes& s = schemes();
    std::lock_guard lk(s.mu);
    s.factories[std::string(scheme)] = factory;
    return true;
}

void throw_error(std::error_code ec, std::string_view key, const char* what) { throw_error(ec, key, what, {}); }

void throw_error(std::error_code ec, std::string_view key, const char* what, std::string_view why) {
    std::string message = "keylock: ";
    message += what;
    if (!key.empty()) {
        // Keys may be binary and long: show a short, printable prefix and the length.
        message += " '";
        for (unsigned char c : key.substr(0, 32)) {
            if (c >= 0x20 && c < 0x7f) {
                message.push_back(static_cast<char>(c));
            } else {
                message += '?';
            }
        }
        if (key.size() > 32) message += "...";
        message += "' (" + std::to_string(key.size()) + " bytes)";
    }
    message += ": ";
    message += ec.message();
    if (!why.empty()) {
        message += ": ";
        message += why;
    }
    throw Error(ec, message);
}

}  // namespace detail

KeyedLockRegistry KeyedLockRegistry::from_url(std::string_view url) {
    const std::string scheme = detail::url_scheme(url);
    std::string known;
    {
        detail::Schemes& s = detail::schemes();
        std::unique_lock lk(s.mu);
        if (auto it = s.factories.find(scheme); it != s.factories.end()) {
            const detail::BackendFactory factory = it->second;
            lk.unlock();
            return KeyedLockRegistry(factory(url));
        }
        for (const auto& [name, factory] : s.factories) known += (known.empty() ? "" : ", ") + name;
    }
    std::string hint;
    for (const char* redis : {"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
                              "rediss+cluster", "redlock", "rediss+redlock"}) {
        if (scheme == redis) hint = "; link keylock::redis for " + scheme + "://";
    }
    if (scheme == "sim") hint = "; link keylock::testing for sim:// and make a keylock::testing::Simulation";
    throw Error(errc::unknown_scheme,
                "keylock: unknown URL scheme '" + scheme + "' (this program supports: " + known + hint + ")");
}

std::string detail::url_from_env(const char* var, std::string_view fallback) {
    const char* value = var != nullptr ? std::getenv(var) : nullptr;
    return std::string(value == nullptr || *value == '\0' ? fallback : std::string_view(value));
}

std::optional<MultiGuard> KeyedLockRegistry::acquire_all(std::vector<std::string_view> keys, detail::Deadline deadline,
                                                         const std::stop_token& stop, bool waits_forever) {
    const char* what = "lock_all";
    if (keys.empty()) throw Error(errc::invalid_argument, "keylock: lock_all: no keys");
    for (std::string_view key : keys) {
        if (std::error_code ec = detail::check_key(*backend_, key)) detail::throw_error(ec, key, what);
    }
    // One order for every caller: the keys' bytes, as unsigned (string_view's own order).
    std::sort(keys.begin(), keys.end());
    if (auto same = std::adjacent_find(keys.begin(), keys.end()); same != keys.end()) {
        detail::throw_error(errc::invalid_argument, *same, "lock_all: a repeated key");
    }
    std::vector<Guard> guards;
    guards.reserve(keys.size());
    std::vector<detail::Acquired> taken;
    // The backend may take a run of the keys at once, all or none, without waiting (on Redis,
    // keys of one slot in one script): the same as taking them one by one in this order, each
    // free. Only the one-by-one path waits, and only for a key greater than every key held, as
    // before; after a key found held, keys go one by one through it before the next run.
    std::size_t one_by_one_until = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
        if (i >= one_by_one_until && !stop.stop_requested()) {  // (a stop: the one-by-one path says cancelled)
            std::size_t held = 0;
            taken.clear();
            const std::size_t took =
                backend_->try_acquire_all(std::span<const std::string_view>(keys).subspan(i), deadline, taken, held);
            if (took > 0) {
                for (const detail::Acquired& a : taken) guards.push_back(Guard(backend_.get(), a));
                i += took - 1;
                continue;
            }
            one_by_one_until = i + held + 1;
        }
        const std::string_view key = keys[i];
        std::error_code ec;
        const detail::Acquired a = acquire(request(key, LockMode::exclusive, deadline, stop), ec);
        if (a.hold == nullptr) {
            // Those taken go back (newest first) before anything is reported.
            while (!guards.empty()) guards.pop_back();
            if (!waits_forever && (ec == errc::timeout || ec == errc::cancelled)) return std::nullopt;
            detail::throw_error(ec, key, what);
        }
        guards.push_back(Guard(backend_.get(), a));
    }
    return MultiGuard(std::move(guards));
}

KeyedLockRegistry KeyedLockRegistry::from_env(const char* var, std::string_view fallback) {
    return from_url(detail::url_from_env(var, fallback));
}

}  // namespace keylock
