// SPDX-License-Identifier: BSL-1.0
// fuzz/reply_model.hpp — fuzz_reply's reference model: what keylock::redis::Connection must do
// with a payload, worked out from the payload parsed in one piece by a separate hiredis reader.
//
// Scenario reads an input's header bytes (their meaning: the top of fuzz_reply.cpp); Model runs
// the scenario over the parsed payload and records what every handler must get. Nothing here
// touches a socket or a Connection: fuzz_reply.cpp drives the real connection and compares.
#pragma once

#include <hiredis/hiredis.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <keylock/error.hpp>

#include "backends/redis/connection.hpp"
#include "backends/redis/reply_bound.hpp"

namespace keylock_fuzz {

using keylock::errc;
using keylock::redis::Reply;

inline constexpr std::string_view password = "Pw-Fz7q-SECRET";  // the endpoint's, when AUTH is on
inline constexpr std::size_t max_chunks = 64;

// A broken property aborts with what broke (libFuzzer then reports the input); the model's
// parsing checks use these, and so does the harness in fuzz_reply.cpp.
[[noreturn]] inline void violated(const std::string& what) {
    std::fprintf(stderr, "fuzz_reply: property violated: %s\n", what.c_str());
    std::abort();
}

inline void require(bool ok, const std::string& what) {
    if (!ok) violated(what);
}

// -- Replies ----------------------------------------------------------------------------------

/// A hiredis reply as a keylock Reply, written independently of connection.cpp's copy.
inline Reply to_reply(const redisReply* r) {
    Reply out;
    switch (r->type) {
        case REDIS_REPLY_STRING: out.type = Reply::Type::string; break;
        case REDIS_REPLY_ARRAY: out.type = Reply::Type::array; break;
        case REDIS_REPLY_INTEGER: out.type = Reply::Type::integer; break;
        case REDIS_REPLY_NIL: out.type = Reply::Type::nil; break;
        case REDIS_REPLY_STATUS: out.type = Reply::Type::status; break;
        case REDIS_REPLY_ERROR: out.type = Reply::Type::error; break;
        default: violated("harness: hiredis reply of type " + std::to_string(r->type));
    }
    out.integer = r->integer;
    if (r->str != nullptr) out.str.assign(r->str, r->len);
    for (std::size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
        out.elements.push_back(to_reply(r->element[i]));
    }
    return out;
}

inline bool same(const Reply& a, const Reply& b) {
    if (a.type != b.type || a.integer != b.integer || a.str != b.str || a.elements.size() != b.elements.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.elements.size(); ++i) {
        if (!same(a.elements[i], b.elements[i])) return false;
    }
    return true;
}

inline bool empty(const Reply& r) {
    return r.type == Reply::Type::nil && r.integer == 0 && r.str.empty() && r.elements.empty();
}

/// The first element of an array (its kind, for pub/sub), else "".
inline std::string_view kind(const Reply& r) {
    return r.type == Reply::Type::array && !r.elements.empty() ? std::string_view(r.elements[0].str) : "";
}

/// What a connection with an on_push handler hands to it, when the oldest pending command (if
/// any) unsubscribes from `unsubscribing` (SUNSUBSCRIBE) or not (""): pub/sub messages, and a
/// "sunsubscribe" that does not answer that command (Redis Cluster ended the subscription).
inline bool is_push(const Reply& r, std::optional<std::string_view> unsubscribing) {
    if (kind(r) == "message" || kind(r) == "smessage") return true;
    return kind(r) == "sunsubscribe" && r.elements.size() >= 2 &&
           (!unsubscribing || *unsubscribing != r.elements[1].str);
}

inline std::string describe(const Reply& r) {
    static const char* names[] = {"string", "array", "integer", "nil", "status", "error"};
    std::string s = names[static_cast<int>(r.type)];
    if (r.type == Reply::Type::array) {
        s += "[";
        for (const auto& e : r.elements) s += describe(e) + ",";
        return s + "]";
    }
    return s + "(" + (r.type == Reply::Type::integer ? std::to_string(r.integer) : r.str.substr(0, 40)) + ")";
}

/// The payload parsed in one piece: its complete replies, and whether bytes that are not RESP, or
/// a reply that breaks the bounds of reply_bound.hpp (max_reply_bytes = `max_bytes`), follow them.
struct Parsed {
    std::vector<Reply> replies;
    bool protocol_error = false;
};

// Like connection.cpp, refuse arrays longer than this (hiredis would allocate their element
// pointers at once: 16 GiB for "*2147483647").
inline constexpr int max_array_elements = 1 << 20;
inline redisReplyObjectFunctions hiredis_functions;

template <class Count>  // int in hiredis 0.14, size_t from 1.0 on
inline void* create_array(const redisReadTask* task, Count elements) {
    if (elements > static_cast<Count>(max_array_elements)) return nullptr;  // a reader error
    return hiredis_functions.createArray(task, elements);
}

inline Parsed parse_all(std::string_view bytes, std::uint64_t max_bytes = std::uint64_t{1} << 62) {
    Parsed out;
    // The bounds, over the payload in one piece (the connection checks each read as it comes):
    // the replies before the one that breaks them are parsed, then it is a protocol error.
    keylock::redis::ReplyBound bound(max_bytes, max_array_elements);
    const std::size_t within = bound.scan(bytes.data(), bytes.size());
    const bool refused = within < bytes.size();
    require(refused == !bound.broken().empty(), "ReplyBound: scan() and broken() disagree");
    bytes = bytes.substr(0, within);
    static redisReplyObjectFunctions functions = [] {
        redisReader* r = redisReaderCreate();
        if (r == nullptr) violated("harness: redisReaderCreate failed");
        hiredis_functions = *r->fn;
        redisReaderFree(r);
        redisReplyObjectFunctions f = hiredis_functions;
        f.createArray = &create_array;
        return f;
    }();
    redisReader* reader = redisReaderCreateWithFunctions(&functions);
    if (reader == nullptr) violated("harness: redisReaderCreate failed");
    if (redisReaderFeed(reader, bytes.data(), bytes.size()) != REDIS_OK) violated("harness: redisReaderFeed failed");
    for (;;) {
        void* raw = nullptr;
        if (redisReaderGetReply(reader, &raw) != REDIS_OK) {
            out.protocol_error = true;
            break;
        }
        if (raw == nullptr) break;
        out.replies.push_back(to_reply(static_cast<redisReply*>(raw)));
        freeReplyObject(raw);
    }
    redisReaderFree(reader);
    if (refused) out.protocol_error = true;
    return out;
}

/// The commands the server received: RESP arrays of bulk strings.
inline std::vector<std::vector<std::string>> parse_commands(std::string_view bytes) {
    std::vector<std::vector<std::string>> out;
    const Parsed p = parse_all(bytes);
    require(!p.protocol_error, "the connection wrote bytes that are not RESP");
    for (const Reply& r : p.replies) {
        require(r.type == Reply::Type::array, "the connection wrote a command that is not an array");
        std::vector<std::string> argv;
        for (const Reply& a : r.elements) {
            require(a.type == Reply::Type::string, "the connection wrote an argument that is not a bulk string");
            argv.push_back(a.str);
        }
        out.push_back(std::move(argv));
    }
    return out;
}

// -- The scenario -----------------------------------------------------------------------------

struct Scenario {
    bool input_handshake, auth, user, select, role, on_push, server_closes, early;
    std::size_t commands;
    std::size_t close_at;   // >= 8: none
    unsigned sunsubscribe;  // bit i: command i is a SUNSUBSCRIBE (else an EVALSHA)
    bool push_fails, follow_up;
    std::uint64_t max_reply_bytes;    // the endpoint's
    std::vector<std::size_t> chunks;  // sizes, summing to the payload's
    std::string_view payload;

    static std::optional<Scenario> read(const std::uint8_t* data, std::size_t size) {
        if (size < 4) return std::nullopt;
        Scenario s{};
        const std::uint8_t f = data[0], c = data[1];
        s.input_handshake = (f & 0x01) != 0;
        s.auth = (f & 0x02) != 0;
        s.user = s.auth && (f & 0x04) != 0;
        s.select = (f & 0x08) != 0;
        s.role = (f & 0x10) != 0;
        s.on_push = (f & 0x20) != 0;
        s.server_closes = (f & 0x40) != 0;
        s.early = (f & 0x80) != 0;
        s.commands = (c & 7) % 5;
        s.close_at = (c >> 3) & 7;
        s.push_fails = (c & 0x40) != 0;
        s.follow_up = (c & 0x80) != 0;
        s.max_reply_bytes = (data[3] & 0x80) != 0 ? 256 : std::uint64_t{64} << 20;
        s.payload = std::string_view(reinterpret_cast<const char*>(data) + 4, size - 4);
        std::size_t left = s.payload.size();
        s.sunsubscribe = data[2] >> 4;
        if ((data[2] & 15) == 0) {
            if (left > 0) s.chunks.push_back(left);
        } else {
            const std::size_t max = std::size_t{1} << ((data[2] & 15) - 1) % 9;
            std::uint32_t state = (std::uint32_t{data[2]} << 8 | data[3]) * 2654435761u + 1;
            while (left > 0) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                std::size_t n = 1 + state % max;
                if (n > left || s.chunks.size() + 1 == max_chunks) n = left;
                s.chunks.push_back(n);
                left -= n;
            }
        }
        return s;
    }

    /// The handshake commands, in the order the connection sends them.
    std::vector<std::vector<std::string>> handshake() const {
        std::vector<std::vector<std::string>> out;
        if (auth) {
            out.push_back(user ? std::vector<std::string>{"AUTH", "fuzzer", std::string(password)}
                               : std::vector<std::string>{"AUTH", std::string(password)});
        }
        if (select) out.push_back({"SELECT", "3"});
        if (role) out.push_back({"ROLE"});
        out.push_back({"PING"});
        return out;
    }

    /// Command `id` (the follow-up command is the last).
    std::vector<std::string> command(std::size_t id) const {
        if (id < 4 && ((sunsubscribe >> id) & 1) != 0) return {"SUNSUBSCRIBE", "{chan}-" + std::to_string(id)};
        return {"EVALSHA",
                "9f3a61c5e2b1d0c4a7e8f6b5d4c3b2a1908f7e6d",
                "1",
                "keylock:key-" + std::to_string(id),
                std::string("tok\r\n\0en", 9),
                "30000"};
    }
    /// The channel of a SUNSUBSCRIBE command, else "".
    std::string unsubscribing(std::size_t id) const {
        const auto argv = command(id);
        return argv[0] == "SUNSUBSCRIBE" ? argv[1] : std::string();
    }
};


struct Result {
    std::error_code ec;
    Reply reply;
};

struct ConnectOutcome {
    std::error_code ec;
    std::string message;
};

/// What the connection must do with the payload (see the top of the file).
struct Model {
    enum class State { connecting, ready, failed, closed };
    const Scenario& s;
    State state;
    struct Slot {
        std::string verb;  // a handshake command; empty for a command
        std::size_t id = 0;
        std::string unsubscribing;  // the channel of a SUNSUBSCRIBE
    };
    std::deque<Slot> pending;
    std::vector<std::size_t> early;
    std::vector<std::optional<Result>> results;
    std::vector<Reply> pushes;
    std::optional<std::error_code> connected;
    std::optional<std::error_code> failure;  // on_failure
    bool sent_follow_up = false;

    explicit Model(const Scenario& sc) : s(sc), results(sc.commands + (sc.follow_up ? 1 : 0)) {
        if (s.input_handshake) {
            state = State::connecting;
            for (const auto& c : s.handshake()) pending.push_back({c[0], 0, ""});
            for (std::size_t i = 0; i < s.commands; ++i) early.push_back(i);
        } else {
            state = State::ready;
            connected = std::error_code{};
            for (std::size_t i = 0; i < s.commands; ++i) pending.push_back({"", i, s.unsubscribing(i)});
        }
    }

    bool up() const { return state == State::ready || state == State::connecting; }

    void fail(errc e) {
        if (!up()) return;
        const bool was_ready = state == State::ready;
        state = State::failed;
        const std::error_code ec = make_error_code(was_ready ? errc::unavailable : e);
        for (const Slot& p : pending) {
            if (p.verb.empty()) results[p.id] = Result{ec, {}};
        }
        for (const std::size_t id : early) results[id] = Result{ec, {}};
        pending.clear();
        early.clear();
        if (!was_ready) connected = make_error_code(e);
        if (was_ready) failure = make_error_code(e);
    }

    void close() {
        if (state == State::closed) return;
        const bool was_failed = state == State::failed;
        state = State::closed;
        if (was_failed) return;
        for (const Slot& p : pending) {
            if (p.verb.empty()) results[p.id] = Result{make_error_code(errc::cancelled), {}};
        }
        for (const std::size_t id : early) results[id] = Result{make_error_code(errc::cancelled), {}};
        pending.clear();
        early.clear();
        if (!connected) connected = make_error_code(errc::cancelled);
    }

    void send(std::size_t id) {
        if (state == State::ready) {
            pending.push_back({"", id, s.unsubscribing(id)});
        } else if (state == State::connecting) {
            early.push_back(id);
        } else {
            results[id] = Result{make_error_code(errc::unavailable), {}};
        }
    }

    /// A command's handler got a reply: what the harness's handlers do then.
    void handled(std::size_t id) {
        if (id == 0 && s.follow_up && !sent_follow_up) {
            sent_follow_up = true;
            send(s.commands);
        }
        if (id == s.close_at) close();
    }

    /// One reply; false when the connection stops reading.
    bool reply(const Reply& r) {
        const auto front =
            pending.empty() ? std::nullopt : std::optional<std::string_view>(pending.front().unsubscribing);
        if (s.on_push && is_push(r, front)) {
            pushes.push_back(r);
            if (s.push_fails && pushes.size() == 1) fail(errc::unavailable);
            return up();
        }
        if (pending.empty()) {
            fail(errc::protocol_error);
            return false;
        }
        const Slot slot = pending.front();
        pending.pop_front();
        if (slot.verb.empty()) {
            results[slot.id] = Result{{}, r};
            handled(slot.id);
            return up();
        }
        // A handshake command.
        if (r.is_error()) {
            const bool auth = slot.verb == "AUTH" || r.str.rfind("NOAUTH", 0) == 0 ||
                              r.str.rfind("WRONGPASS", 0) == 0 || r.str.rfind("NOPERM", 0) == 0;
            fail(auth ? errc::auth_failed : errc::backend_error);
            return false;
        }
        if (slot.verb == "ROLE" &&
            (r.type != Reply::Type::array || r.elements.empty() || r.elements[0].str != "master")) {
            fail(errc::unavailable);
            return false;
        }
        if (!pending.empty() && !pending.front().verb.empty()) return true;  // more of the handshake
        state = State::ready;
        for (const std::size_t id : early) pending.push_back({"", id, s.unsubscribing(id)});
        early.clear();
        connected = std::error_code{};
        return true;
    }

    void run(const Parsed& parsed) {
        for (const Reply& r : parsed.replies) {
            if (!reply(r)) break;
        }
        if (parsed.protocol_error) fail(errc::protocol_error);
        if (s.server_closes) fail(errc::unavailable);
        close();
    }
};

}  // namespace keylock_fuzz
