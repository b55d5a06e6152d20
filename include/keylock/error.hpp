// SPDX-License-Identifier: BSL-1.0
// keylock/error.hpp — the error codes keylock reports.
//
// Every failure keylock reports is a `keylock::errc` value inside a `std::error_code` of the
// "keylock" category. Synchronous calls throw `keylock::Error` (a `std::system_error`);
// asynchronous ones complete with the `std::error_code`. Messages never contain secrets such as
// the password of a URL.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include <keylock/export.hpp>

namespace keylock {

enum class errc {
    // Keys
    invalid_key = 1,  ///< the key is empty
    key_too_long,     ///< the key is longer than the registry's `max_key_bytes`
    too_many_keys,    ///< `max_keys` entries are in memory already; none could be added
    // Waiting
    timeout,    ///< the lock was not acquired before the deadline
    cancelled,  ///< the wait was cancelled (stop token)
    // Ownership
    not_held,   ///< the guard or handle holds no lock
    not_owner,  ///< the lock is no longer ours (lease expired, someone else holds it)
    lock_lost,  ///< the lease was lost while the lock was held
    // Configuration
    invalid_url,     ///< the URL could not be parsed
    unknown_scheme,  ///< no backend is registered for the URL's scheme
    unknown_option,  ///< the URL or options name an option this backend does not have
    invalid_option,  ///< an option has a value out of range or of the wrong form
    // Backends
    unavailable,     ///< the backend cannot be reached (connection refused or lost, no reply in time)
    auth_failed,     ///< the backend refused our credentials (wrong password, unknown user, ACL)
    backend_error,   ///< the backend answered with an error (e.g. WRONGTYPE on a lock key)
    protocol_error,  ///< the server's replies are not the backend's protocol (not Redis?)
    not_supported,   ///< the backend cannot do this (e.g. inspect a local:// lock from outside its process)
    // Modes
    mode_conflict,     ///< the key is in use in a way this request cannot join (a semaphore asked for a
                       ///< lock, a lock asked for permits, permits with another limit)
    invalid_argument,  ///< an argument out of range (0 permits, more permits than the limit, a repeated
                       ///< key in lock_all, a conversion the guard's mode does not allow)
};

/// The "keylock" error category.
KEYLOCK_API const std::error_category& error_category() noexcept;

/// `e` as a std::error_code in error_category(), so that `ec == errc::timeout` compares.
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

/// The exception thrown by synchronous calls. `code()` is in `error_category()` (or, for errors
/// from the operating system, the system category); `what()` is one sentence naming the
/// failing operation and the part at fault.
class KEYLOCK_API Error : public std::system_error {
public:
    /// An error whose message is "keylock: " and the code's own message.
    explicit Error(std::error_code ec) : std::system_error(ec), message_("keylock: " + ec.message()) {}
    /// An error with the message `what` (which should start with "keylock: ").
    Error(std::error_code ec, const std::string& what) : std::system_error(ec), message_(what) {}
    /// As above, for a keylock error code.
    Error(errc e, const std::string& what) : Error(make_error_code(e), what) {}

    /// The message given at construction.
    const char* what() const noexcept override { return message_.what(); }

private:
    std::runtime_error message_;  // a refcounted string: copying the exception cannot throw
};

}  // namespace keylock

namespace keylock::detail {
/// Throws keylock::Error for `ec`: "keylock: <what> '<printable key prefix>' (<n> bytes): <message>"
/// (the key part only when `key` is not empty).
[[noreturn]] KEYLOCK_API void throw_error(std::error_code ec, std::string_view key, const char* what);
/// As above, followed by ": <why>" (e.g. the server's own error message).
[[noreturn]] KEYLOCK_API void throw_error(std::error_code ec, std::string_view key, const char* what,
                                          std::string_view why);
}  // namespace keylock::detail

/// @cond
template <>
struct std::is_error_code_enum<keylock::errc> : std::true_type {};
/// @endcond
