// SPDX-License-Identifier: BSL-1.0
// libFuzzer target: the reply handling of keylock::redis::Connection (backends/redis/connection.cpp).
//
// How it is reached: through the real thing, without a network or a thread. A real Connection
// connects over a Unix socket in a temporary directory to a fake server that is nothing but the
// accepted file descriptor, written to and read from by this code between io_context::poll()
// calls, all on the fuzzing thread (no timer ever fires: the timeouts are 10 minutes, and no
// input waits). The fake server reads the handshake the connection sends (AUTH, SELECT, ROLE,
// PING, as the endpoint asks), answers it properly (or lets the input answer it), and then
// writes the input's payload in chunks, polling the io_context after each, so that the
// connection's reads end where the chunks end and partial replies, replies split anywhere and
// several replies in one read are all exercised. A harness over the socket rather than over an
// extracted reply parser keeps Connection as it is and covers what a parser alone would not:
// the matching of replies to pending commands, pub/sub pushes, the handshake's checks, failing
// on a protocol error or an unexpected reply, and handlers that close or send from inside
// on_bytes(). It runs at about 4,000 inputs a second on one core (scripts/fuzz.sh prints the
// rate), far above what would call for fuzzing a piece extracted from Connection instead.
//
// The input: 4 header bytes, then the payload (RESP, as a Redis server would write it).
//   byte 0, flags: 0x01 the payload answers the handshake too (else the fake server does)
//                  0x02 a password (AUTH)      0x04 a user as well (AUTH user password)
//                  0x08 db 3 (SELECT)         0x10 master_only (ROLE)
//                  0x20 an on_push handler (a subscriber connection)
//                  0x40 the server closes its end after the payload (EOF)
//                  0x80 the commands are sent before connect() (they wait for the handshake)
//   byte 1: bits 0-2, commands sent: value % 5 (EVALSHA with 6 arguments, binary-safe);
//           bits 3-5: the handler of that command (if there is one) calls close() when it gets
//           a reply; 0x40: the push handler calls fail_now() at the first push; 0x80: the
//           handler of command 0 sends one more command.
//   byte 2: bits 4-7, commands 0-3 that are a SUNSUBSCRIBE instead (whose "sunsubscribe" reply
//           answers them rather than going to on_push). Bits 0-3, chunking: 0 writes the payload
//           at once; n > 0 in chunks of 1 to 2^((n - 1) % 9) bytes, their sizes drawn from a
//           generator seeded with bytes 2 and 3, at most 64 chunks (the last takes the rest).
// E.g. `printf '\x00\x01\x00\x00+OK\r\n'`: one command, answered "+OK" in one write.
//
// What must hold (a violation abort()s; libFuzzer reports it with the input that did it): the
// outcome equals that of a model run over the payload as one piece, parsed by a separate hiredis
// reader: replies answer pending commands in order, pushes go to on_push, an unexpected reply or
// bytes that are not RESP fail the connection (pending commands then fail with `unavailable`
// if it was up, else with the handshake's error), close() cancels what is left. In particular:
// every handler runs exactly once and in order, with either an error code (and an empty reply)
// or a reply equal to the model's; on_push gets only "message" and "smessage" arrays (and a
// "sunsubscribe" that answers no SUNSUBSCRIBE); on_connect and on_failure run when they should,
// with the right code, and no message shows the password; the server receives the handshake and
// then the commands, byte for byte; and once closed and its handlers drained, nothing holds the
// connection any more. As in connection.cpp, an array of more than 2^20 elements is a protocol
// error (hiredis would allocate its element pointers at once: 16 GiB for "*2147483647").
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <algorithm>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <boost/asio/io_context.hpp>

#include <keylock/error.hpp>

#include "backends/redis/connection.hpp"

namespace {

using keylock::errc;
using keylock::redis::Connection;
using keylock::redis::Endpoint;
using keylock::redis::Reply;

constexpr std::string_view password = "Pw-Fz7q-SECRET";
constexpr std::size_t max_chunks = 64;
constexpr int max_poll_rounds = 1000;

[[noreturn]] void violated(const std::string& what) {
    std::fprintf(stderr, "fuzz_reply: property violated: %s\n", what.c_str());
    std::abort();
}

void require(bool ok, const std::string& what) {
    if (!ok) violated(what);
}

// -- The fake server's socket -----------------------------------------------------------------

struct World {
    std::string dir;
    std::string path;
    int listener = -1;
    boost::asio::io_context io;

    World() {
        std::signal(SIGPIPE, SIG_IGN);
        // In $TMPDIR (scripts/fuzz.sh points it at a directory it removes: a crash skips ~World),
        // if a socket path fits there.
        const char* tmp = std::getenv("TMPDIR");
        std::string templ = tmp != nullptr && *tmp == '/' && std::strlen(tmp) < 64 ? tmp : "/tmp";
        templ += "/keylock-fuzz-XXXXXX";
        if (::mkdtemp(templ.data()) == nullptr) violated("harness: mkdtemp failed in " + templ);
        dir = templ;
        path = dir + "/redis.sock";
        listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
        if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::listen(listener, 16) != 0) {
            violated("harness: cannot listen on " + path);
        }
    }
    ~World() {
        ::close(listener);
        ::unlink(path.c_str());
        ::rmdir(dir.c_str());
    }
};

World& world() {
    static World w;
    return w;
}

/// Runs the io_context's ready handlers until none is left (bounded).
void drain() {
    auto& io = world().io;
    for (int i = 0; i < max_poll_rounds; ++i) {
        io.restart();
        if (io.poll() == 0) return;
    }
    violated("harness: the io_context still had work after " + std::to_string(max_poll_rounds) + " polls");
}

// -- Replies ----------------------------------------------------------------------------------

/// A hiredis reply as a keylock Reply, written independently of connection.cpp's copy.
Reply to_reply(const redisReply* r) {
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

bool same(const Reply& a, const Reply& b) {
    if (a.type != b.type || a.integer != b.integer || a.str != b.str || a.elements.size() != b.elements.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.elements.size(); ++i) {
        if (!same(a.elements[i], b.elements[i])) return false;
    }
    return true;
}

bool empty(const Reply& r) {
    return r.type == Reply::Type::nil && r.integer == 0 && r.str.empty() && r.elements.empty();
}

/// The first element of an array (its kind, for pub/sub), else "".
std::string_view kind(const Reply& r) {
    return r.type == Reply::Type::array && !r.elements.empty() ? std::string_view(r.elements[0].str) : "";
}

/// What a connection with an on_push handler hands to it, when the oldest pending command (if
/// any) unsubscribes from `unsubscribing` (SUNSUBSCRIBE) or not (""): pub/sub messages, and a
/// "sunsubscribe" that does not answer that command (Redis Cluster ended the subscription).
bool is_push(const Reply& r, std::optional<std::string_view> unsubscribing) {
    if (kind(r) == "message" || kind(r) == "smessage") return true;
    return kind(r) == "sunsubscribe" && r.elements.size() >= 2 &&
           (!unsubscribing || *unsubscribing != r.elements[1].str);
}

std::string describe(const Reply& r) {
    static const char* names[] = {"string", "array", "integer", "nil", "status", "error"};
    std::string s = names[static_cast<int>(r.type)];
    if (r.type == Reply::Type::array) {
        s += "[";
        for (const auto& e : r.elements) s += describe(e) + ",";
        return s + "]";
    }
    return s + "(" + (r.type == Reply::Type::integer ? std::to_string(r.integer) : r.str.substr(0, 40)) + ")";
}

/// The payload parsed in one piece: its complete replies, and whether bytes that are not RESP
/// follow them.
struct Parsed {
    std::vector<Reply> replies;
    bool protocol_error = false;
};

// Like connection.cpp, refuse arrays longer than this (hiredis would allocate their element
// pointers at once: 16 GiB for "*2147483647").
constexpr int max_array_elements = 1 << 20;
redisReplyObjectFunctions hiredis_functions;

template <class Count>  // int in hiredis 0.14, size_t from 1.0 on
void* create_array(const redisReadTask* task, Count elements) {
    if (elements > static_cast<Count>(max_array_elements)) return nullptr;  // a reader error
    return hiredis_functions.createArray(task, elements);
}

Parsed parse_all(std::string_view bytes) {
    Parsed out;
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
    return out;
}

/// The commands the server received: RESP arrays of bulk strings.
std::vector<std::vector<std::string>> parse_commands(std::string_view bytes) {
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

/// The server side of one connection.
struct Server {
    int fd = -1;
    std::string received;

    ~Server() {
        if (fd >= 0) ::close(fd);
    }
    void accept() {
        for (int i = 0; i < 100 && fd < 0; ++i) {
            fd = ::accept4(world().listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0) drain();
        }
        require(fd >= 0, "harness: the connection did not connect to the fake server");
    }
    void read() {
        char buf[4096];
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n <= 0) return;
            received.append(buf, static_cast<std::size_t>(n));
        }
    }
    /// Writes all of `bytes`, or false when the client is gone.
    bool write(std::string_view bytes) {
        while (!bytes.empty()) {
            const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n <= 0) return false;  // the connection closed its end (it failed), or stopped reading
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }
};

std::string quoted(std::string_view s) {
    std::string out;
    for (const unsigned char c : s) {
        if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
        } else {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", c);
            out += b;
        }
    }
    return out;
}

void check_message(const std::string& what, const std::string& message, bool may_show_password) {
    require(message.rfind("keylock: ", 0) == 0, what + " does not start with \"keylock: \": " + quoted(message));
    require(may_show_password || message.find(password) == std::string::npos,
            what + " shows the password: " + quoted(message));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto scenario = Scenario::read(data, size);
    if (!scenario) return -1;  // not added to the corpus
    const Scenario& s = *scenario;
    World& w = world();

    Endpoint ep;
    ep.host.clear();
    ep.unix_path = w.path;
    if (s.auth) ep.password = password;
    if (s.user) ep.user = "fuzzer";
    if (s.select) ep.db = 3;
    ep.master_only = s.role;
    ep.connect_timeout = std::chrono::minutes(10);  // no timer fires while an input runs
    ep.command_timeout = std::chrono::minutes(10);

    // What the harness saw.
    const std::size_t total = s.commands + (s.follow_up ? 1 : 0);
    std::vector<std::vector<Result>> results(total);
    std::vector<std::size_t> order;  // of the handlers' calls
    std::vector<Reply> pushes;
    std::vector<ConnectOutcome> connects;
    std::vector<ConnectOutcome> failures;

    auto conn = std::make_shared<Connection>(w.io, ep);
    const std::weak_ptr<Connection> weak = conn;
    Connection* c = conn.get();
    std::vector<std::size_t> sent;  // the commands, in the order they were sent
    bool sent_follow_up = false;
    std::function<void(std::size_t)> send = [&](std::size_t id) {
        sent.push_back(id);
        const auto argv = s.command(id);
        c->send(std::vector<std::string_view>(argv.begin(), argv.end()), [&, id](std::error_code ec, Reply r) {
            order.push_back(id);
            results[id].push_back({ec, r});
            if (ec) return;
            if (id == 0 && s.follow_up && !sent_follow_up) {
                sent_follow_up = true;
                send(s.commands);
            }
            if (id == s.close_at) c->close();
        });
    };
    if (s.on_push) {
        c->on_push([&](Reply r) {
            pushes.push_back(std::move(r));
            if (s.push_fails && pushes.size() == 1) c->fail_now("fuzz: the push handler failed the connection");
        });
    }
    c->on_failure([&](std::error_code ec, std::string m) { failures.push_back({ec, std::move(m)}); });

    if (s.early) {
        for (std::size_t i = 0; i < s.commands; ++i) send(i);
    }
    c->connect([&](std::error_code ec, std::string m) { connects.push_back({ec, std::move(m)}); });
    if (!s.early && s.input_handshake) {
        for (std::size_t i = 0; i < s.commands; ++i) send(i);  // they wait for the handshake
    }
    drain();

    Server server;
    server.accept();
    drain();
    server.read();
    const auto handshake = s.handshake();
    if (!s.input_handshake) {
        require(parse_commands(server.received) == handshake, "the handshake is not the one the endpoint asks for");
        std::string answers;
        for (const auto& cmd : handshake) {
            answers += cmd[0] == "ROLE"   ? "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
                       : cmd[0] == "PING" ? "+PONG\r\n"
                                          : "+OK\r\n";
        }
        require(server.write(answers), "harness: cannot answer the handshake");
        drain();
        require(c->connected(), "a connection whose handshake was answered properly is not up");
        require(connects.size() == 1 && !connects[0].ec, "on_connect did not report success");
        if (!s.early) {
            for (std::size_t i = 0; i < s.commands; ++i) send(i);
        }
        drain();
    }

    // The payload, chunk by chunk.
    const bool payload_has_password = s.payload.find(password) != std::string_view::npos;
    std::size_t at = 0;
    for (const std::size_t n : s.chunks) {
        if (!server.write(s.payload.substr(at, n))) break;
        at += n;
        drain();
    }
    if (s.server_closes) ::shutdown(server.fd, SHUT_WR);
    drain();
    const bool failed = !c->connected() && !c->failure().empty();
    c->close();
    drain();
    server.read();

    // The model, over the payload in one piece.
    Model model(s);
    model.run(parse_all(s.payload));

    // Every handler ran once, in order, as the model says.
    for (std::size_t id = 0; id < total; ++id) {
        const std::string which = "command " + std::to_string(id) + ": ";
        const auto& expected = model.results[id];
        if (!expected) {
            require(results[id].empty(), which + "a handler ran for a command that was never sent");
            continue;
        }
        require(results[id].size() == 1, which + "the handler ran " + std::to_string(results[id].size()) + " times");
        const Result& got = results[id][0];
        require(got.ec == expected->ec,
                which + "got error code '" + got.ec.message() + "', the model says '" + expected->ec.message() + "'");
        if (got.ec) {
            require(got.ec.category() == keylock::error_category(), which + "an error outside the keylock category");
            require(empty(got.reply), which + "a handler got both an error code and a reply");
        } else {
            require(same(got.reply, expected->reply),
                    which + "got " + describe(got.reply) + ", the model says " + describe(expected->reply));
        }
    }
    for (std::size_t i = 1; i < order.size(); ++i) {
        // The follow-up command is sent after the others: it completes after them too.
        require(order[i - 1] < order[i], "handlers ran out of order");
    }

    require(pushes.size() == model.pushes.size(), "on_push ran " + std::to_string(pushes.size()) +
                                                      " times, the model says " + std::to_string(model.pushes.size()));
    for (std::size_t i = 0; i < pushes.size(); ++i) {
        require(kind(pushes[i]) == "message" || kind(pushes[i]) == "smessage" || kind(pushes[i]) == "sunsubscribe",
                "on_push got " + describe(pushes[i]));
        require(same(pushes[i], model.pushes[i]),
                "on_push got " + describe(pushes[i]) + ", the model says " + describe(model.pushes[i]));
    }

    require(connects.size() == 1, "on_connect ran " + std::to_string(connects.size()) + " times");
    require(model.connected.has_value() && connects[0].ec == *model.connected,
            "on_connect got '" + connects[0].ec.message() + "', the model says '" +
                (model.connected ? model.connected->message() : std::string("nothing")) + "'");
    if (connects[0].ec && connects[0].ec != errc::cancelled) {  // cancelled: "connection closed"
        check_message("the on_connect message", connects[0].message, payload_has_password);
    }

    require(failures.size() == (model.failure ? 1u : 0u), "on_failure ran " + std::to_string(failures.size()) +
                                                              " times, the model says " +
                                                              std::to_string(model.failure ? 1 : 0));
    if (model.failure) {
        require(failures[0].ec == *model.failure,
                "on_failure got '" + failures[0].ec.message() + "', the model says '" + model.failure->message() + "'");
        check_message("the on_failure message", failures[0].message, payload_has_password);
    }
    if (failed) {
        require(c->failure().find(password) == std::string::npos || payload_has_password,
                "failure() shows the password");
    }
    require(c->pending() == 0, "commands still pending after close()");

    // The server got the handshake, then the commands sent while the connection was up, whole.
    const auto received = parse_commands(server.received);
    require(received.size() >= handshake.size() && std::equal(handshake.begin(), handshake.end(), received.begin()),
            "the server did not get the handshake");
    // Then a prefix of the commands, in the order they were sent (some may not have been written
    // before the connection failed or was closed: in this harness replies may come first).
    require(received.size() - handshake.size() <= sent.size(), "the server got more commands than were sent");
    for (std::size_t i = handshake.size(); i < received.size(); ++i) {
        require(received[i] == s.command(sent[i - handshake.size()]),
                "the server got command " + std::to_string(i - handshake.size()) + " wrong");
    }

    conn.reset();
    drain();
    require(weak.expired(), "the connection outlives its owner: something still holds it after close()");
    return 0;
}
