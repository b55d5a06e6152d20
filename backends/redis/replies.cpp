// SPDX-License-Identifier: BSL-1.0
// What the Redis backend's scripts answer, read into what the backend acts on.
#include "replies.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <keylock/error.hpp>

namespace keylock::redis {

namespace {

/// How Redis 7.0 words an ACL's refusal of a command run by a script (later versions say NOPERM).
constexpr std::string_view kScriptRefused = "The user executing the script can't run this command";

bool script_refused(const Reply& r) { return r.str.find(kScriptRefused) != std::string::npos; }

}  // namespace

std::string error_reason(const Reply& r) {
    if (r.str.rfind("Redis at ", 0) == 0) return r.str;
    std::string why = "Redis answered '";
    why += r.str;
    why += '\'';
    if (script_refused(r)) why += " (this user's ACL lacks a command of the minimum ACL in docs/configuration.md)";
    return why;
}

std::error_code error_code_of(const Reply& r) {
    // NOPERM: an ACL refuses a command, key or channel (the scripts name which); a quorum's or
    // a cluster's error names the node first (see error_reason).
    const bool refused =
        r.str.starts_with("NOPERM") || r.str.find("answered 'NOPERM") != std::string::npos || script_refused(r);
    if (refused) return make_error_code(errc::auth_failed);
    // The mode scripts' own codes (mode_scripts.hpp).
    const auto has = [&](std::string_view code) { return r.str.find(code) != std::string::npos; };
    if (has("KEYLOCK_MODE") || has("KEYLOCK_LIMIT")) return make_error_code(errc::mode_conflict);
    if (has("KEYLOCK_PERMITS") || has("KEYLOCK_CONVERT")) return make_error_code(errc::invalid_argument);
    return make_error_code(errc::backend_error);
}

AttemptOutcome acquire_outcome_of(std::error_code ec, const Reply& r) {
    AttemptOutcome o;
    if (ec) {
        o.kind = AttemptOutcome::Kind::no_answer;
        o.ec = ec;
        o.why = r.str;
        return o;
    }
    o.kind = AttemptOutcome::Kind::failed;
    o.ec = make_error_code(errc::backend_error);
    if (r.is_error()) {
        o.ec = error_code_of(r);
        o.why = error_reason(r);
        return o;
    }
    if (r.type != Reply::Type::array || r.elements.size() < 2 || r.elements.size() > 3) {
        o.why = "unexpected reply to the acquire script";
        return o;
    }
    o.ec = {};
    if (r.elements[0].integer == 1) {
        o.kind = AttemptOutcome::Kind::granted;
        o.fence = static_cast<std::uint64_t>(r.elements[1].integer);
    } else {
        o.kind = AttemptOutcome::Kind::held;
        o.pttl = r.elements[1].integer;
        o.back_off = r.elements.size() == 3;
    }
    return o;
}

LockInfo lock_info_of(const Reply& r, std::error_code& ec) {
    if (r.type != Reply::Type::array || r.elements.empty()) {
        ec = make_error_code(errc::backend_error);
        return {};
    }
    LockInfo info;
    if (r.elements[0].integer != 1 || r.elements.size() != 3) return info;
    info.held = true;
    // `<fencing token>:<owner token>`; anything else (someone else's value) has no token.
    const std::string& value = r.elements[1].str;
    if (const auto colon = value.find(':'); colon != std::string::npos && colon > 0 && colon <= 20) {
        std::uint64_t fence = 0;
        bool digits = true;
        for (std::size_t i = 0; i < colon; ++i) {
            digits = digits && value[i] >= '0' && value[i] <= '9';
            fence = fence * 10 + static_cast<std::uint64_t>(value[i] - '0');
        }
        if (digits) info.fencing_token = fence;
    }
    info.ttl = std::chrono::milliseconds(r.elements[2].integer >= 0 ? r.elements[2].integer : -1);
    return info;
}

}  // namespace keylock::redis
