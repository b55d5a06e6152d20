// SPDX-License-Identifier: BSL-1.0
// What the Redis backend's scripts answer, read into what the backend acts on.
#include "replies.hpp"

#include <algorithm>
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

std::string owner_of(const std::string& token) {
    const auto colon = token.rfind(':');
    return colon == std::string::npos ? token : token.substr(colon + 1);
}

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

namespace {

/// The fencing token at the start of `text` (`<fence>:…`), or 0.
std::uint64_t leading_fence(std::string_view text) {
    const auto colon = text.find(':');
    if (colon == std::string_view::npos || colon == 0 || colon > 20) return 0;
    std::uint64_t fence = 0;
    for (std::size_t i = 0; i < colon; ++i) {
        if (text[i] < '0' || text[i] > '9') return 0;
        fence = fence * 10 + static_cast<std::uint64_t>(text[i] - '0');
    }
    return fence;
}

}  // namespace

LockInfo lock_info_of_modes(const Reply& r, std::error_code& ec, std::string& why) {
    const auto& e = r.elements;
    if (r.type != Reply::Type::array || e.size() != 5 || e[3].type != Reply::Type::array) {
        ec = make_error_code(errc::backend_error);
        why = "unexpected reply to the inspect script";
        return {};
    }
    const std::string& kind = e[0].str;
    LockInfo info;
    if (kind == "none") return info;
    const auto& holders = e[3].elements;  // member (or value), remaining ms, …
    if (kind == "exclusive") {
        info.held = true;
        info.holders = 1;
        if (holders.size() == 2) {
            info.fencing_token = leading_fence(holders[0].str);
            info.ttl = std::chrono::milliseconds(holders[1].integer >= 0 ? holders[1].integer : -1);
        }
        return info;
    }
    if (kind != "shared" && kind != "semaphore") {
        ec = make_error_code(errc::backend_error);
        why = "the lock key holds a " + kind + ", not a lock";
        return {};
    }
    bool readers = false;
    long long longest = -1;
    for (std::size_t i = 0; i + 1 < holders.size(); i += 2) {
        const std::string& member = holders[i].str;  // `<mode>:<fence>:<owner>`
        const auto colon = member.find(':');
        if (colon == std::string::npos) continue;
        ++info.holders;
        readers = readers || member[0] == 's';
        info.upgrader = info.upgrader || member[0] == 'u';
        info.fencing_token = std::max(info.fencing_token, leading_fence(std::string_view(member).substr(colon + 1)));
        longest = std::max(longest, holders[i + 1].integer);
    }
    info.held = info.holders > 0;
    info.ttl = std::chrono::milliseconds(longest);
    if (kind == "semaphore") {
        info.mode = LockMode::permits;
        info.permits = static_cast<std::uint32_t>(e[2].integer);
        info.limit = static_cast<std::uint32_t>(e[1].integer);
        return info;
    }
    info.mode = readers || !info.upgrader ? LockMode::shared : LockMode::upgrade;
    return info;
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
    info.fencing_token = leading_fence(r.elements[1].str);
    info.ttl = std::chrono::milliseconds(r.elements[2].integer >= 0 ? r.elements[2].integer : -1);
    return info;
}

}  // namespace keylock::redis
