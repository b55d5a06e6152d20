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
//   byte 3: bit 7, max_reply_bytes 256 (else the default, 64 MiB).
// E.g. `printf '\x00\x01\x00\x00+OK\r\n'`: one command, answered "+OK" in one write.
//
// What must hold (a violation abort()s; libFuzzer reports it with the input that did it): the
// outcome equals that of a model (fuzz/reply_model.hpp) run over the payload as one piece, parsed
// by a separate hiredis reader: replies answer pending commands in order, pushes go to on_push,
// an unexpected reply or bytes that are not RESP fail the connection (pending commands then fail
// with `unavailable` if it was up, else with the handshake's error), close() cancels what is
// left. In particular:
// every handler runs exactly once and in order, with either an error code (and an empty reply)
// or a reply equal to the model's; on_push gets only "message" and "smessage" arrays (and a
// "sunsubscribe" that answers no SUNSUBSCRIBE); on_connect and on_failure run when they should,
// with the right code, and no message shows the password; the server receives the handshake and
// then the commands, byte for byte; and once closed and its handlers drained, nothing holds the
// connection any more. As in connection.cpp, an array of more than 2^20 elements is a protocol
// error (hiredis would allocate its element pointers at once: 16 GiB for "*2147483647"), and so
// is a reply that breaks the other bounds of backends/redis/reply_bound.hpp (max_reply_bytes,
// nesting, RESP2's type bytes): the model runs ReplyBound over the payload in one piece, the
// connection over each read as it comes, so the bound must not depend on where reads end.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
#include "reply_model.hpp"

namespace {

using namespace keylock_fuzz;  // the model and its reply helpers (reply_model.hpp)
using keylock::redis::Connection;
using keylock::redis::Endpoint;

constexpr int max_poll_rounds = 1000;

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
    ep.health_check = std::chrono::minutes(10);
    ep.max_reply_bytes = s.max_reply_bytes;

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
    model.run(parse_all(s.payload, s.max_reply_bytes));

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
