// Exit statuses shared by `keylock` and `keylock demo`, after sysexits.h.
#pragma once

#include <system_error>

#include <keylock/error.hpp>

namespace keylock::tools {

inline constexpr int exit_usage = 64;        // EX_USAGE
inline constexpr int exit_unavailable = 69;  // EX_UNAVAILABLE
inline constexpr int exit_tempfail = 75;     // EX_TEMPFAIL: not acquired in time, or lost
inline constexpr int exit_config = 78;       // EX_CONFIG

/// The exit status for a keylock error: a bad URL or option is a configuration error (78), a bad
/// key or an operation the backend lacks a usage error (64), a backend that cannot be reached or
/// that refuses the command 69; any other code gives `other`.
inline int exit_status_of(std::error_code ec, int other) {
    if (ec == errc::invalid_url || ec == errc::unknown_scheme || ec == errc::unknown_option ||
        ec == errc::invalid_option) {
        return exit_config;
    }
    if (ec == errc::invalid_key || ec == errc::key_too_long || ec == errc::not_supported) return exit_usage;
    if (ec == errc::unavailable || ec == errc::auth_failed || ec == errc::protocol_error || ec == errc::backend_error) {
        return exit_unavailable;
    }
    return other;
}

}  // namespace keylock::tools
