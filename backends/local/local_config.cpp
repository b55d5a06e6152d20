// SPDX-License-Identifier: BSL-1.0
// The local backend as the registry sees it: its URL, its scheme's registration, and the
// registry constructors that take its options. The core knows no backend: `local://` is
// registered here exactly as `redis://` is by keylock::redis.
#include "local_config.hpp"

#include <set>
#include <string>

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>

#include <keylock/error.hpp>

#include "local_backend.hpp"
#include "src/config.hpp"

namespace keylock {

namespace local {

LocalOptions parse_url(std::string_view text) {
    using detail::shown;
    auto parsed = boost::urls::parse_uri(text);
    if (!parsed) {
        throw Error(errc::invalid_url, "keylock: malformed local:// URL: " + parsed.error().message());
    }
    const boost::urls::url_view& url = *parsed;
    if (url.has_userinfo() || !url.encoded_host().empty() || url.has_port()) {
        throw Error(errc::invalid_url,
                    "keylock: a local:// URL takes no user, host or port (write local://?option=value)");
    }
    if (!url.encoded_path().empty()) {
        throw Error(errc::invalid_url,
                    "keylock: a local:// URL takes no path; found '" + shown(url.encoded_path()) + "'");
    }
    if (url.has_fragment()) {
        throw Error(errc::invalid_url, "keylock: a local:// URL takes no fragment ('#...')");
    }

    LocalOptions options;
    std::set<std::string> seen;
    for (const auto& param : url.params()) {
        const std::string& name = param.key;
        const std::string& value = param.value;
        if (!seen.insert(name).second) {
            throw Error(errc::invalid_option, "keylock: option '" + shown(name) + "' is given twice");
        }
        if (name == "idle_ttl") {
            auto d = detail::parse_duration(value);
            if (!d) detail::bad_option(name, value, "a duration such as 500ms, 30s, 2m or 0");
            options.idle_ttl = *d;
        } else if (name == "max_keys") {
            auto n = detail::parse_size(value);
            if (!n) detail::bad_option(name, value, "a whole number (0 for no limit)");
            options.max_keys = *n;
        } else if (name == "max_key_bytes") {
            auto n = detail::parse_size(value);
            if (!n || *n == 0) detail::bad_option(name, value, "a whole number of at least 1");
            options.max_key_bytes = *n;
        } else if (name == "fair") {
            auto b = detail::parse_bool(value);
            if (!b) detail::bad_option(name, value, "true or false");
            options.fair = *b;
        } else if (name == "shards") {
            auto n = detail::parse_size(value);
            if (!n || *n == 0 || *n > 65536 || (*n & (*n - 1)) != 0) {
                detail::bad_option(name, value, "a power of two from 1 to 65536");
            }
            options.shards = *n;
        } else {
            throw Error(errc::unknown_option,
                        "keylock: unknown option '" + shown(name) +
                            "' for local:// (known: idle_ttl, max_keys, max_key_bytes, fair, shards)");
        }
    }
    return options;
}

}  // namespace local

std::string LocalOptions::to_url() const {
    const LocalOptions defaults;
    std::string query;
    auto add = [&query](const char* name, const std::string& value) {
        query += query.empty() ? '?' : '&';
        query += name;
        query += '=';
        query += value;
    };
    if (idle_ttl != defaults.idle_ttl) add("idle_ttl", detail::format_duration(idle_ttl));
    if (max_keys != defaults.max_keys) add("max_keys", std::to_string(max_keys));
    if (max_key_bytes != defaults.max_key_bytes) add("max_key_bytes", std::to_string(max_key_bytes));
    if (fair != defaults.fair) add("fair", fair ? "true" : "false");
    if (shards != defaults.shards) add("shards", std::to_string(shards));
    return "local://" + query;
}

KeyedLockRegistry::KeyedLockRegistry() : KeyedLockRegistry(LocalOptions{}) {}

KeyedLockRegistry::KeyedLockRegistry(const LocalOptions& options) : backend_(local::make_backend(options)) {}

KeyedLockRegistry local_registry(const LocalOptions& options) { return KeyedLockRegistry(options); }

}  // namespace keylock

// Referred to by backends/local/anchor.cpp, which every user of keylock::keylock compiles, so
// that a static link keeps this object and its registration.
extern "C" {
extern KEYLOCK_API const bool keylock_local_registered;
const bool keylock_local_registered = keylock::detail::register_scheme(
    "local", [](std::string_view url) { return keylock::local::make_backend(keylock::local::parse_url(url)); });
}
