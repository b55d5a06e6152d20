// SPDX-License-Identifier: BSL-1.0
#include "config.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <iterator>
#include <limits>

#include <boost/algorithm/hex.hpp>

#include <keylock/error.hpp>

namespace keylock::detail {

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

}  // namespace

void bad_option(std::string_view name, std::string_view value, const char* expected) {
    throw Error(errc::invalid_option,
                "keylock: option '" + std::string(name) + "' has value '" + shown(value) + "'; expected " + expected);
}

std::optional<std::size_t> parse_size(std::string_view text) {
    std::size_t value = 0;
    if (text.empty()) return std::nullopt;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return value;
}

/// Shows a user-supplied value in a message: at most 64 bytes, non-printable bytes escaped.
std::string shown(std::string_view value) {
    std::string out;
    for (unsigned char c : value.substr(0, 64)) {
        if (c >= 0x20 && c < 0x7f && c != '\'') {
            out.push_back(static_cast<char>(c));
        } else {
            out += "\\x";
            const char byte = static_cast<char>(c);
            boost::algorithm::hex_lower(&byte, &byte + 1, std::back_inserter(out));
        }
    }
    if (value.size() > 64) out += "...";
    return out;
}

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
    if (digits == 0) return std::nullopt;
    const auto number = parse_size(text.substr(0, digits));
    if (!number) return std::nullopt;
    const std::string_view unit = text.substr(digits);
    std::uint64_t scale = 0;
    if (unit == "ms" || (unit.empty() && *number == 0)) {  // a bare 0 needs no unit
        scale = 1;
    } else if (unit == "s") {
        scale = 1000;
    } else if (unit == "m") {
        scale = 60'000;
    } else if (unit == "h") {
        scale = 3'600'000;
    } else {
        return std::nullopt;
    }
    // Keep within what a deadline on the steady clock (nanoseconds, 64 bits) can hold: ~100 years.
    constexpr std::uint64_t max_ms = 100ULL * 365 * 24 * 3'600'000;
    if (*number > max_ms / scale) return std::nullopt;
    return std::chrono::milliseconds(static_cast<std::int64_t>(*number * scale));
}

std::string format_duration(std::chrono::milliseconds d) {
    const auto ms = d.count();
    if (ms == 0) return "0";
    if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
    if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

std::optional<bool> parse_bool(std::string_view text) {
    const std::string t = lower(text);
    if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
    if (t == "false" || t == "0" || t == "no" || t == "off") return false;
    return std::nullopt;
}

std::string url_scheme(std::string_view url) {
    const auto colon = url.find(':');
    if (colon == std::string_view::npos || colon == 0) {
        throw Error(errc::invalid_url, "keylock: malformed URL: no scheme (expected e.g. local://)");
    }
    std::string scheme = lower(url.substr(0, colon));
    const bool ok = std::isalpha(static_cast<unsigned char>(scheme[0])) &&
                    std::all_of(scheme.begin(), scheme.end(),
                                [](unsigned char c) { return std::isalnum(c) || c == '+' || c == '-' || c == '.'; });
    if (!ok) throw Error(errc::invalid_url, "keylock: malformed URL: bad scheme '" + shown(scheme) + "'");
    return scheme;
}

}  // namespace keylock::detail
