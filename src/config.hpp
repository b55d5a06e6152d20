// Parsing of configuration values and URL schemes, shared by the backends (internal: reached
// through the targets' private include path, never installed).
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace keylock::detail {

/// A user-supplied value as shown in a message: at most 64 bytes, non-printable bytes escaped.
std::string shown(std::string_view value);

/// "500ms", "30s", "2m", "1h", "0": a whole number and a unit. nullopt when malformed or too
/// large to represent.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);
/// The shortest exact form parse_duration reads back ("1500ms", "30s", "2m").
std::string format_duration(std::chrono::milliseconds d);
/// "true"/"false", "1"/"0", "yes"/"no", "on"/"off" (any case).
std::optional<bool> parse_bool(std::string_view text);
/// A decimal whole number without sign.
std::optional<std::size_t> parse_size(std::string_view text);

/// Throws keylock::Error (`invalid_option`): "option 'name' has value '…'; expected …".
[[noreturn]] void bad_option(std::string_view name, std::string_view value, const char* expected);

/// The lower-cased scheme of `url`; throws keylock::Error (`invalid_url`) if there is none.
std::string url_scheme(std::string_view url);

}  // namespace keylock::detail
