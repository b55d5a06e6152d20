// SPDX-License-Identifier: BSL-1.0
// Parsing of configuration values and URL schemes, shared by the backends (internal: reached
// through the targets' private include path, never installed). Exported from libkeylock, not
// API: libkeylock_redis and the keylock command use them.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <keylock/export.hpp>

namespace keylock::detail {

/// A user-supplied value as shown in a message: at most 64 bytes, non-printable bytes escaped.
KEYLOCK_API std::string shown(std::string_view value);

/// "500ms", "30s", "2m", "1h", "0": a whole number and a unit. nullopt when malformed or too
/// large to represent.
KEYLOCK_API std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);
/// The shortest exact form parse_duration reads back ("1500ms", "30s", "2m").
KEYLOCK_API std::string format_duration(std::chrono::milliseconds d);
/// "true"/"false", "1"/"0", "yes"/"no", "on"/"off" (any case).
KEYLOCK_API std::optional<bool> parse_bool(std::string_view text);
/// A decimal whole number without sign.
KEYLOCK_API std::optional<std::size_t> parse_size(std::string_view text);

/// Throws keylock::Error (`invalid_option`): "option 'name' has value '…'; expected …".
[[noreturn]] KEYLOCK_API void bad_option(std::string_view name, std::string_view value, const char* expected);

/// The lower-cased scheme of `url`; throws keylock::Error (`invalid_url`) if there is none.
KEYLOCK_API std::string url_scheme(std::string_view url);

}  // namespace keylock::detail
