// SPDX-License-Identifier: BSL-1.0
// libFuzzer target: the URL and option parsers (src/config.hpp, backends/redis/redis_config.hpp).
//
// The input is one URL. It goes to url_scheme(), local::parse_url() and parse_redis_url(), and,
// to check that no message shows a password, to parse_redis_url() again behind a planted user and
// password: "SCHEME://u:Pw-Fz7q-SECRET@" + input, with SCHEME one of the Redis schemes (picked by
// the input's first byte), and the same with the password percent-encoded ("Pw%2DFz7q%2DSECRET")
// and with an encoded '@' in it ("Pw%40Fz7q-SECRET"), when the input has no '@' of its own (nor
// "Pw" or "SECRET", so that it cannot spell the password itself).
//
// What must hold (a violation abort()s, which libFuzzer reports as a crash with a reproducer):
//   - a parser either returns or throws keylock::Error: any other exception is a bug (and so is
//     anything AddressSanitizer or UndefinedBehaviorSanitizer report);
//   - an Error's code is in the keylock category, one of the codes the parser is documented to
//     throw, and its message is one line of printable ASCII starting with "keylock: "
//     (docs/configuration.md: "Messages show at most 64 bytes of an offending value, with
//     non-printable bytes escaped, and never a password");
//   - the planted password is in no message, and in no URL that to_url() writes by default;
//   - what parses round-trips: local::parse_url(o.to_url()) == o, and for a Redis URL
//     parse_redis_url(to_url(c, Password::included)) == c and parse_redis_url(to_url(c)) == c
//     but with the password "***" (redis_config.hpp);
//   - what parse_redis_url returns passes check(), which holds a configuration made in code to
//     the same rules.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <iterator>
#include <string>
#include <string_view>

#include <keylock/error.hpp>
#include <keylock/options.hpp>

#include "backends/local/local_config.hpp"
#include "backends/redis/redis_config.hpp"
#include "src/config.hpp"

namespace {

using keylock::errc;
using keylock::redis::Password;
using keylock::redis::RedisConfig;

// Written out once, decoded, and percent-encoded: none of these may appear in a message.
constexpr std::string_view planted_password = "Pw-Fz7q-SECRET";
constexpr std::string_view planted_encoded = "Pw%2DFz7q%2DSECRET";
constexpr std::string_view planted_with_at = "Pw@Fz7q-SECRET";
constexpr std::string_view planted_at_written = "Pw%40Fz7q-SECRET";

[[noreturn]] void violated(const char* what, std::string_view url, std::string_view detail = {}) {
    std::fprintf(stderr, "fuzz_url: property violated: %s\n  url (%zu bytes): ", what, url.size());
    for (const unsigned char c : url) {
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            std::fputc(c, stderr);
        } else {
            std::fprintf(stderr, "\\x%02x", c);
        }
    }
    std::fprintf(stderr, "\n  detail: %.*s\n", static_cast<int>(detail.size()), detail.data());
    std::abort();
}

bool contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

/// Checks a keylock::Error thrown for `url`: its category and code, and a readable message.
void check_error(const keylock::Error& e, std::string_view url, std::initializer_list<errc> allowed) {
    const std::string_view message = e.what();
    if (e.code().category() != keylock::error_category()) violated("an Error outside the keylock category", url);
    bool known = false;
    for (const errc c : allowed) known = known || e.code() == c;
    if (!known) violated("an Error with a code the parser does not document", url, e.code().message());
    if (message.rfind("keylock: ", 0) != 0 || message.size() <= 9) {
        violated("a message that does not start with \"keylock: \" and say something", url, message);
    }
    for (const unsigned char c : message) {
        if (c < 0x20 || c >= 0x7f) violated("a message with a byte that is not printable ASCII", url, message);
    }
}

/// `secrets`: the planted password as decoded and as written (empty when none was planted).
struct Secrets {
    std::string_view decoded, written;
    bool in(std::string_view text) const {
        return (!decoded.empty() && contains(text, decoded)) || (!written.empty() && contains(text, written));
    }
};

/// Runs `f`; checks what it throws. Returns whether it returned normally.
template <class F>
bool parses(std::string_view url, std::initializer_list<errc> allowed, Secrets secrets, F&& f) {
    try {
        f();
        return true;
    } catch (const keylock::Error& e) {
        check_error(e, url, allowed);
        if (secrets.in(e.what())) violated("a message shows the password", url, e.what());
        return false;
    } catch (const std::exception& e) {
        violated("an exception other than keylock::Error", url, e.what());
    } catch (...) {
        violated("an exception that is no std::exception", url);
    }
}

constexpr std::initializer_list<errc> redis_codes = {errc::invalid_url, errc::unknown_option, errc::invalid_option};

/// The round trips of a Redis configuration parsed from `url`.
void check_redis_round_trip(std::string_view url, const RedisConfig& c, Secrets planted) {
    std::string full;
    RedisConfig again;
    if (!parses(url, redis_codes, planted, [&] {
            full = to_url(c, Password::included);
            again = keylock::redis::parse_redis_url(full);
        })) {
        violated("to_url(c, Password::included) does not parse", url, full);
    }
    if (!(again == c)) violated("parse_redis_url(to_url(c, Password::included)) != c", url, full);

    std::string redacted;
    if (!parses(url, redis_codes, planted, [&] {
            redacted = to_url(c);
            again = keylock::redis::parse_redis_url(redacted);
        })) {
        violated("to_url(c) does not parse", url, redacted);
    }
    RedisConfig expected = c;
    if (!expected.endpoint.password.empty()) expected.endpoint.password = "***";
    if (!expected.sentinel_password.empty()) expected.sentinel_password = "***";
    if (!(again == expected)) violated("parse_redis_url(to_url(c)) != c with the passwords \"***\"", url, redacted);
    if (!c.endpoint.password.empty() && !contains(redacted, ":***@")) {
        violated("to_url(c) does not write the password as ***", url, redacted);
    }
    // Unless the rest of the configuration spells it out (a host or prefix that happens to be the
    // same text), the password is not in the URL.
    RedisConfig without = c;
    without.endpoint.password.clear();
    without.sentinel_password.clear();
    if (!planted.in(to_url(without, Password::included)) && planted.in(redacted)) {
        violated("to_url(c) shows the password", url, redacted);
    }
}

/// parse_redis_url(url), whose password is `planted` (empty: not known).
void check_redis(std::string_view url, Secrets planted) {
    RedisConfig c;
    if (parses(url, redis_codes, planted, [&] { c = keylock::redis::parse_redis_url(url); })) {
        if (!planted.decoded.empty() && c.endpoint.password != planted.decoded) {
            violated("the planted password was not parsed as the password", url, c.endpoint.password);
        }
        check_redis_round_trip(url, c, planted);
        if (!parses(url, redis_codes, planted, [&] { keylock::redis::check(c); })) {
            violated("check() refuses what parse_redis_url returned", url);
        }
    }
}

void check_local(std::string_view url) {
    keylock::LocalOptions o;
    if (!parses(url, {errc::invalid_url, errc::unknown_option, errc::invalid_option}, {},
                [&] { o = keylock::local::parse_url(url); })) {
        return;
    }
    const std::string back = o.to_url();
    keylock::LocalOptions again;
    if (!parses(url, {}, {}, [&] { again = keylock::local::parse_url(back); })) {
        violated("LocalOptions::to_url() does not parse", url, back);
    }
    if (!(again == o)) violated("local::parse_url(o.to_url()) != o", url, back);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);

    std::string scheme;
    if (parses(input, {errc::invalid_url}, {}, [&] { scheme = keylock::detail::url_scheme(input); })) {
        if (scheme.empty()) violated("url_scheme() returned an empty scheme", input);
    }
    check_local(input);
    check_redis(input, {});

    // The same text behind a planted password, where the input cannot be mistaken for one.
    if (contains(input, "@") || contains(input, "Pw") || contains(input, "SECRET")) return 0;
    // The first byte picks the scheme, so that each input tries one (and the fuzzer can steer).
    static constexpr std::string_view schemes[] = {"redis://",           "rediss://",         "unix://",
                                                   "redis+sentinel://",  "redis+cluster://",  "redlock://",
                                                   "rediss+sentinel://", "rediss+cluster://", "rediss+redlock://"};
    const std::string_view prefix = schemes[size == 0 ? 0 : data[0] % std::size(schemes)];
    for (const Secrets planted :
         {Secrets{planted_password, planted_password}, Secrets{planted_password, planted_encoded},
          Secrets{planted_with_at, planted_at_written}}) {
        const std::string url = std::string(prefix) + "u:" + std::string(planted.written) + "@" + std::string(input);
        check_redis(url, planted);
    }
    return 0;
}
