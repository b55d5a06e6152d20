// SPDX-License-Identifier: BSL-1.0
#include "connection.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <charconv>

#include <utility>

#include <hiredis/hiredis.h>

#include <boost/asio/coroutine.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <keylock/error.hpp>

#include "reply_bound.hpp"

namespace keylock::redis {

namespace asio = boost::asio;
using Socket = asio::generic::stream_protocol::socket;
using TlsStream = asio::ssl::stream<Socket>;
using Clock = std::chrono::steady_clock;

std::string host_port(const std::string& host, std::uint16_t port) {
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string Endpoint::where() const {
    if (!unix_path.empty()) return unix_path;
    if (host.empty()) return "the master (not located yet)";  // Sentinel: before the sentinels answer
    return host_port(host, port);
}

namespace {

Reply copy_reply(const redisReply* r) {
    Reply out;
    switch (r->type) {
        case REDIS_REPLY_STRING: out.type = Reply::Type::string; break;
        case REDIS_REPLY_ARRAY: out.type = Reply::Type::array; break;
        case REDIS_REPLY_INTEGER: out.type = Reply::Type::integer; break;
        case REDIS_REPLY_NIL: out.type = Reply::Type::nil; break;
        case REDIS_REPLY_STATUS: out.type = Reply::Type::status; break;
        case REDIS_REPLY_ERROR: out.type = Reply::Type::error; break;
        default: out.type = Reply::Type::nil; break;
    }
    out.integer = r->integer;
    if (r->str != nullptr) out.str.assign(r->str, r->len);
    if (r->type == REDIS_REPLY_ARRAY) {
        out.elements.reserve(r->elements);
        for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(copy_reply(r->element[i]));
    }
    return out;
}

/// hiredis allocates an array's element pointers as soon as it has read the array's length: a
/// peer announcing "*2147483647" (a broken or hostile server, anything that is not Redis) would
/// make it allocate 16 GiB at once. keylock's replies are small (CLUSTER SLOTS, the longest, has
/// at most 16384 entries): more elements in one reply are a protocol error (ReplyBound, which
/// refuses them before hiredis reads them; the reader's own check below is a second line).
constexpr int max_array_elements = 1 << 20;

/// TCP keepalive, the second line of defence behind the health check (Endpoint::health_check):
/// the kernel probes a connection idle for 10 s every 5 s and drops it after 3 unanswered probes.
void keep_alive(Socket& socket) {
    boost::system::error_code ignored;
    socket.set_option(asio::socket_base::keep_alive(true), ignored);  // at best, as no_delay
#if defined(TCP_KEEPIDLE) && defined(TCP_KEEPINTVL) && defined(TCP_KEEPCNT)
    const int fd = socket.native_handle();
    for (const auto& [option, value] : {std::pair{TCP_KEEPIDLE, 10}, {TCP_KEEPINTVL, 5}, {TCP_KEEPCNT, 3}}) {
        (void)::setsockopt(fd, IPPROTO_TCP, option, &value, sizeof value);
    }
#endif
}

/// The reply-building functions of hiredis's own readers.
const redisReplyObjectFunctions& hiredis_functions() {
    static const redisReplyObjectFunctions functions = [] {
        redisReader* r = redisReaderCreate();
        if (r == nullptr) throw std::bad_alloc();
        const redisReplyObjectFunctions f = *r->fn;
        redisReaderFree(r);
        return f;
    }();
    return functions;
}

// The count is an int in hiredis 0.14 and a size_t from 1.0 on.
template <class Count>
void* create_array(const redisReadTask* task, Count elements) {
    if (elements > static_cast<Count>(max_array_elements)) {
        *static_cast<bool*>(task->privdata) = true;  // the reader's privdata: Impl::array_too_long
        return nullptr;                              // for hiredis, out of memory: the reader fails
    }
    return hiredis_functions().createArray(task, elements);
}

/// A hiredis reader that refuses arrays longer than max_array_elements, saying so in `too_long`.
redisReader* create_reader(bool* too_long) {
    static redisReplyObjectFunctions functions = [] {
        redisReplyObjectFunctions f = hiredis_functions();
        f.createArray = &create_array;
        return f;
    }();
    redisReader* r = redisReaderCreateWithFunctions(&functions);
    if (r != nullptr) r->privdata = too_long;
    return r;
}

/// Appends `argv` as one RESP command (binary-safe: every argument is length-prefixed). Written
/// here rather than by hiredis's redisFormatCommandArgv, which formats each length with sprintf
/// into a buffer of its own that is then copied: this is on every command's path.
void append_command(std::string& out, const std::vector<std::string_view>& argv) {
    std::size_t size = 16;
    for (auto a : argv) size += a.size() + 24;
    out.reserve(out.size() + size);
    auto header = [&out](char kind, std::size_t n) {
        char digits[24];
        digits[0] = kind;
        const auto [end, ec] = std::to_chars(digits + 1, digits + sizeof digits - 2, n);
        (void)ec;  // 20 digits always fit
        end[0] = '\r';
        end[1] = '\n';
        out.append(digits, static_cast<std::size_t>(end + 2 - digits));
    };
    header('*', argv.size());
    for (auto a : argv) {
        header('$', a.size());
        out.append(a).append("\r\n");
    }
}

}  // namespace

struct Connection::Impl {
    Impl(asio::io_context& io, std::uint64_t max_reply_bytes)
        : io(io),
          socket(io),
          resolver(io),
          timer(io),
          command_timer(io),
          health_timer(io),
          bound(max_reply_bytes, max_array_elements),
          reader(create_reader(&array_too_long)) {}
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;
    ~Impl() {
        if (reader != nullptr) redisReaderFree(reader);
    }

    /// Runs `f` with whichever stream carries the bytes.
    template <class F>
    void with_stream(F&& f) {
        if (tls) {
            f(*tls);
        } else {
            f(socket);
        }
    }
    void shut() {
        boost::system::error_code ignored;
        timer.cancel();
        command_timer.cancel();
        health_timer.cancel();
        resolver.cancel();
        if (tls) {
            tls->next_layer().close(ignored);
        } else {
            socket.close(ignored);
        }
    }

    asio::io_context& io;
    Socket socket;  // until a TLS stream takes it over
    std::unique_ptr<asio::ssl::context> ssl;
    std::unique_ptr<TlsStream> tls;
    asio::ip::tcp::resolver resolver;
    asio::steady_timer timer;          // connect_timeout
    asio::steady_timer command_timer;  // the oldest command's deadline (never cancelled while ready)
    bool command_timer_armed = false;
    asio::steady_timer health_timer;  // Endpoint::health_check, while ready
    Clock::time_point last_heard;     // when bytes last came from the server
    ReplyBound bound;                 // what one reply may take, checked before the reader sees it
    bool flush_posted = false;        // a flush of out_ is queued behind the handlers now ready
    // The reader failed on an array longer than max_array_elements (hiredis says "Out of memory").
    bool array_too_long = false;
    redisReader* reader;
    std::array<char, 16 * 1024> buffer{};
    std::function<void(std::error_code, std::string)> on_connect;
    std::vector<std::pair<std::vector<std::string>, ReplyHandler>> early;  // sent before ready
    std::vector<asio::ip::tcp::endpoint> addresses;                        // of the host, tried in turn
    std::size_t handshake_left = 0;                                        // commands yet to answer
    bool in_tls_handshake = false;  // what connect_timeout interrupts, for its message
};

Connection::Connection(asio::io_context& io, Endpoint endpoint)
    : impl_(std::make_unique<Impl>(io, endpoint.max_reply_bytes)), endpoint_(std::move(endpoint)) {
    if (impl_->reader == nullptr) throw std::bad_alloc();
}

Connection::~Connection() { impl_->shut(); }

// ---- Connecting ------------------------------------------------------------------------
//
// Connecting is one Asio stackless coroutine, Connection::Connect (boost::asio::coroutine): its
// steps read in order in Connect::operator(), and each asynchronous step resumes it with its
// outcome. Chosen over a C++20 coroutine (co_spawn, awaitable) because it adds nothing to this
// translation unit's headers (a few macros), each step stays one Asio operation whose handler
// holds the connection, the locator's callback resumes it like any Asio completion, and
// whatever ends a connection meanwhile (close(), the connect_timeout timer, a failed read) needs
// no cancellation of its own: the next resumption finds the connection no longer connecting and
// stops there. The handshake's commands go through the pipeline (handshake()): their replies
// come back in order, each to handshake_answered(), not to the coroutine.

struct Connection::Connect : asio::coroutine {
    explicit Connect(std::shared_ptr<Connection> connection) : c(std::move(connection)) {}

    /// The steps, and the completion of connect and TLS handshake operations.
    void operator()(boost::system::error_code ec = {});

    /// The completion of the host name's resolution: its addresses, to try in turn.
    void operator()(boost::system::error_code ec, const asio::ip::tcp::resolver::results_type& results) {
        c->impl_->addresses.clear();
        for (const auto& r : results) c->impl_->addresses.push_back(r.endpoint());
        (*this)(ec);
    }

    /// The locator's answer: an error (and why), or where the server is.
    void operator()(std::error_code ec, std::string why, std::string host, std::uint16_t port) {
        located = ec;
        not_located = std::move(why);
        if (!ec && c->state_ == State::connecting) {
            c->endpoint_.host = std::move(host);
            c->endpoint_.port = port;
        }
        (*this)();
    }

    /// Sets up the TLS stream over the connected socket; false (the connection failed with
    /// `invalid_option`) if the CA, certificate or key file cannot be used.
    bool set_up_tls() const;

    std::shared_ptr<Connection> c;
    std::size_t address = 0;  // the address being tried
    std::error_code located;  // the locator's error
    std::string not_located;  // and why
};

void Connection::Connect::operator()(boost::system::error_code ec) {
    if (c->state_ != State::connecting) return;  // closed, failed or timed out meanwhile
    Impl& impl = *c->impl_;
    const Endpoint& ep = c->endpoint_;
    const auto unavailable = [this](const std::string& why) { c->fail(make_error_code(errc::unavailable), why); };
    boost::system::error_code ignored;
    BOOST_ASIO_CORO_REENTER(*this) {
        // Where: the locator names the host and port (the master that sentinels name).
        if (c->locate_) {
            BOOST_ASIO_CORO_YIELD c->locate_(*this);
            if (located) return c->fail(located, not_located);
        }

        // The transport: a Unix socket, or each address of the host in turn.
        if (!ep.unix_path.empty()) {
            BOOST_ASIO_CORO_YIELD impl.socket.async_connect(
                Socket::endpoint_type(asio::local::stream_protocol::endpoint(ep.unix_path)), *this);
            if (ec) return unavailable("cannot connect to Redis at " + ep.where() + ": " + ec.message());
        } else {
            BOOST_ASIO_CORO_YIELD impl.resolver.async_resolve(ep.host, std::to_string(ep.port), *this);
            if (ec || impl.addresses.empty()) {
                return unavailable("cannot resolve Redis host " + ep.where() + ": " + ec.message());
            }
            for (address = 0; address < impl.addresses.size(); ++address) {
                impl.socket.close(ignored);
                BOOST_ASIO_CORO_YIELD impl.socket.async_connect(Socket::endpoint_type(impl.addresses[address]), *this);
                if (!ec) break;
            }
            if (ec) return unavailable("cannot connect to Redis at " + ep.where() + ": " + ec.message());
            impl.socket.set_option(asio::ip::tcp::no_delay(true), ignored);  // at best
            keep_alive(impl.socket);
        }

        // TLS over it, for rediss://.
        if (ep.tls) {
            if (!set_up_tls()) return;
            impl.in_tls_handshake = true;
            BOOST_ASIO_CORO_YIELD impl.tls->async_handshake(asio::ssl::stream_base::client, *this);
            impl.in_tls_handshake = false;
            if (ec) return unavailable("TLS handshake with " + ep.where() + " failed: " + ec.message());
        }

        // AUTH, SELECT, ROLE and PING; ready when the last of them answers.
        c->handshake();
    }
}

bool Connection::Connect::set_up_tls() const {
    const Endpoint& ep = c->endpoint_;
    Impl& impl = *c->impl_;
    try {
        auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
        if (!ep.ca_file.empty()) {
            ctx->load_verify_file(ep.ca_file);
        } else {
            ctx->set_default_verify_paths();
        }
        if (!ep.cert_file.empty()) ctx->use_certificate_chain_file(ep.cert_file);
        if (!ep.key_file.empty()) ctx->use_private_key_file(ep.key_file, asio::ssl::context::pem);
        if (ep.verify) {
            ctx->set_verify_mode(asio::ssl::verify_peer);
            if (ep.unix_path.empty()) ctx->set_verify_callback(asio::ssl::host_name_verification(ep.host));
        } else {
            ctx->set_verify_mode(asio::ssl::verify_none);
        }
        impl.ssl = std::move(ctx);
        impl.tls = std::make_unique<TlsStream>(std::move(impl.socket), *impl.ssl);
        // SNI carries host names only (RFC 6066): not for an IP address.
        boost::system::error_code not_ip;
        (void)asio::ip::make_address(ep.host, not_ip);
        if (ep.unix_path.empty() && not_ip) SSL_set_tlsext_host_name(impl.tls->native_handle(), ep.host.c_str());
    } catch (const boost::system::system_error& e) {
        c->fail(make_error_code(errc::invalid_option),
                "TLS setup for " + ep.where() + " failed: " + e.code().message());
        return false;
    }
    return true;
}

void Connection::connect(std::function<void(std::error_code, std::string)> handler) {
    state_ = State::connecting;
    impl_->on_connect = std::move(handler);
    impl_->timer.expires_after(endpoint_.connect_timeout);
    impl_->timer.async_wait([this, self = shared_from_this()](boost::system::error_code ec) {
        if (ec || state_ != State::connecting) return;
        // A TLS client on a plain Redis port hears nothing: Redis waits for the end of what it
        // takes for an inline command.
        fail(make_error_code(errc::unavailable),
             impl_->in_tls_handshake ? "no TLS handshake with " + endpoint_.where() +
                                           " within connect_timeout (is that port TLS? a plain Redis port does "
                                           "not answer a TLS client)"
                                     : "no connection to Redis at " + endpoint_.where() + " within connect_timeout");
    });
    Connect{shared_from_this()}();
}

void Connection::handshake() {
    if (!impl_->tls) {
        // Plain sockets are written directly (see start_write).
        boost::system::error_code ec;
        impl_->socket.non_blocking(true, ec);
        if (ec) {
            fail(make_error_code(errc::unavailable),
                 "cannot set up the socket to " + endpoint_.where() + ": " + ec.message());
            return;
        }
    }
    start_read();
    std::vector<std::vector<std::string>> commands;
    // A user without a password still AUTHs (with an empty password): a user named in the URL
    // must never be silently replaced by `default`.
    if (!endpoint_.password.empty() || !endpoint_.user.empty()) {
        if (endpoint_.user.empty()) {
            commands.push_back({"AUTH", endpoint_.password});
        } else {
            commands.push_back({"AUTH", endpoint_.user, endpoint_.password});
        }
    }
    if (endpoint_.db != 0) commands.push_back({"SELECT", std::to_string(endpoint_.db)});
    if (endpoint_.master_only) commands.push_back({"ROLE"});
    commands.push_back({"PING"});
    impl_->handshake_left = commands.size();
    // Written together (pipelined); checked in order.
    for (const auto& command : commands) {
        append_command(out_, std::vector<std::string_view>(command.begin(), command.end()));
        pending_.push_back({[this, self = shared_from_this(), verb = command[0]](std::error_code ec, const Reply& r) {
                                if (ec || state_ != State::connecting) return;
                                handshake_answered(verb, r);
                            },
                            Clock::time_point::max(),
                            {}});
    }
    start_write();
}

namespace {

/// Replaces every occurrence of `secret` in `text` with "***".
void scrub(std::string& text, const std::string& secret) {
    if (secret.empty()) return;
    for (std::size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 3)) {
        text.replace(at, secret.size(), "***");
    }
}

/// Why AUTH was refused, in words of ours: the server's reply is never shown, since a server may
/// repeat the password in it (Redis without requirepass names the command it refused; an old
/// server or one that is not Redis may echo its arguments). Its error code alone is recognized.
std::string auth_refusal(const std::string& reply) {
    if (reply.starts_with("WRONGPASS")) return "WRONGPASS: wrong user or password";
    if (reply.find("without any password configured") != std::string::npos ||
        reply.find("no password is set") != std::string::npos) {
        return "the server has no password set for that user: leave the password out of the URL";
    }
    return "wrong user or password, or no password is set on the server";
}

}  // namespace

void Connection::handshake_answered(const std::string& verb, const Reply& r) {
    // The server's words in a message, without the user or password: a server may echo what it
    // was sent (e.g. all of the pipelined handshake) in any of its errors.
    const auto words = [this](std::string text) {
        scrub(text, endpoint_.password);
        scrub(text, endpoint_.user);
        return text;
    };
    if (r.is_error()) {
        if (verb == "AUTH") {
            fail(make_error_code(errc::auth_failed),
                 "Redis at " + endpoint_.where() + " refused AUTH (" + auth_refusal(r.str) + ")");
            return;
        }
        const bool auth = r.str.starts_with("NOAUTH") || r.str.starts_with("WRONGPASS") || r.str.starts_with("NOPERM");
        fail(make_error_code(auth ? errc::auth_failed : errc::backend_error),
             "Redis at " + endpoint_.where() + " refused " + verb + ": " + words(r.str));
        return;
    }
    if (verb == "ROLE" && (r.type != Reply::Type::array || r.elements.empty() || r.elements[0].str != "master")) {
        // E.g. an old master that has come back as a replica: the owner asks the sentinels again.
        fail(make_error_code(errc::unavailable), "Redis at " + endpoint_.where() + " is not a master (ROLE says '" +
                                                     words(r.elements.empty() ? std::string() : r.elements[0].str) +
                                                     "')");
        return;
    }
    if (--impl_->handshake_left > 0) return;
    state_ = State::ready;
    impl_->timer.cancel();
    auto early = std::move(impl_->early);
    for (auto& [args, h] : early) {
        std::vector<std::string_view> v(args.begin(), args.end());
        send(v, std::move(h));
    }
    arm_timer();
    impl_->last_heard = Clock::now();
    arm_health(impl_->last_heard + endpoint_.health_check);
    if (auto h = std::exchange(impl_->on_connect, nullptr)) h({}, {});
}

// ---- Commands --------------------------------------------------------------------------

void Connection::send(const std::vector<std::string_view>& argv, ReplyHandler handler) {
    if (state_ == State::failed || state_ == State::closed) {
        asio::post(impl_->io, [h = std::move(handler)] { h(make_error_code(errc::unavailable), {}); });
        return;
    }
    if (state_ != State::ready) {
        impl_->early.emplace_back(std::vector<std::string>(argv.begin(), argv.end()), std::move(handler));
        return;
    }
    append_command(out_, argv);
    pending_.push_back({std::move(handler), Clock::now() + endpoint_.command_timeout,
                        argv.size() == 2 && argv[0] == "SUNSUBSCRIBE" ? std::string(argv[1]) : std::string()});
    arm_timer();
    // Written once the handlers that are ready now have run, so that commands they send go
    // out together (e.g. a guard's release and the next lock of the same thread).
    if (!impl_->flush_posted && !write_in_flight_) {
        impl_->flush_posted = true;
        asio::post(impl_->io, [this, self = shared_from_this()] {
            impl_->flush_posted = false;
            start_write();
        });
    }
}

void Connection::close() {
    if (state_ == State::closed) return;
    const bool was_failed = state_ == State::failed;
    state_ = State::closed;
    impl_->shut();
    if (was_failed) return;
    auto pending = std::move(pending_);
    pending_.clear();
    auto early = std::move(impl_->early);
    for (auto& p : pending) p.handler(make_error_code(errc::cancelled), {});
    for (auto& e : early) e.second(make_error_code(errc::cancelled), {});
    if (auto h = std::exchange(impl_->on_connect, nullptr)) h(make_error_code(errc::cancelled), "connection closed");
}

void Connection::fail(std::error_code ec, const std::string& message) {
    if (state_ == State::failed || state_ == State::closed) return;
    const bool was_ready = state_ == State::ready;
    state_ = State::failed;
    failure_ = message;
    impl_->shut();
    auto pending = std::move(pending_);
    pending_.clear();
    auto early = std::move(impl_->early);
    const std::error_code failed = was_ready ? make_error_code(errc::unavailable) : ec;
    for (auto& p : pending) p.handler(failed, {});
    for (auto& e : early) e.second(failed, {});
    if (auto h = std::exchange(impl_->on_connect, nullptr)) h(ec, "keylock: " + message);
    if (was_ready && on_failure_) on_failure_(ec, "keylock: " + message);
}

void Connection::start_write() {
    if (write_in_flight_ || out_.empty()) return;
    if (state_ != State::ready && state_ != State::connecting) return;
    if (!impl_->tls) {
        // A plain socket usually takes all of it at once: no completion to wait for.
        boost::system::error_code ec;
        const std::size_t n = impl_->socket.write_some(asio::buffer(out_), ec);
        if (ec && ec != asio::error::would_block) {
            write_failed(ec);
            return;
        }
        out_.erase(0, ec ? 0 : n);
        if (out_.empty()) return;
    }
    write_in_flight_ = true;
    writing_.swap(out_);
    out_.clear();
    auto self = shared_from_this();
    impl_->with_stream([&](auto& stream) {
        asio::async_write(stream, asio::buffer(writing_), [this, self](boost::system::error_code ec, std::size_t) {
            write_in_flight_ = false;
            writing_.clear();
            if (state_ != State::ready && state_ != State::connecting) return;
            if (ec) {
                write_failed(ec);
                return;
            }
            start_write();
        });
    });
}

void Connection::write_failed(boost::system::error_code ec) {
    fail(make_error_code(errc::unavailable), "write to Redis at " + endpoint_.where() + " failed: " + ec.message());
}

void Connection::read_failed(boost::system::error_code ec) {
    fail(make_error_code(errc::unavailable),
         ec == asio::error::eof ? "Redis at " + endpoint_.where() + " closed the connection"
                                : "read from Redis at " + endpoint_.where() + " failed: " + ec.message());
}

void Connection::start_read() {
    auto self = shared_from_this();
    impl_->with_stream([&](auto& stream) {
        stream.async_read_some(asio::buffer(impl_->buffer), [this, self](boost::system::error_code ec, std::size_t n) {
            if (state_ != State::ready && state_ != State::connecting) return;
            if (ec) return read_failed(ec);
            impl_->last_heard = Clock::now();
            on_bytes(impl_->buffer.data(), n);
            if (state_ == State::ready || state_ == State::connecting) start_read();
        });
    });
}

void Connection::on_bytes(const char* data, std::size_t n) {
    // The reader gets the bytes before the one at which a reply breaks a bound (the replies that
    // end before it are answered), then the connection fails.
    const std::size_t within = impl_->bound.scan(data, n);
    if (within < n) {
        on_replies(data, within);
        if (state_ != State::ready && state_ != State::connecting) return;
        // RESP2 itself broken, as an HTTP server's answer would: in the words hiredis's errors get.
        const std::string& why = impl_->bound.broken();
        fail(make_error_code(errc::protocol_error),
             impl_->bound.not_resp2()
                 ? "the server at " + endpoint_.where() + " does not speak the Redis protocol (" + why + ")"
                 : "reply from Redis at " + endpoint_.where() + " refused: " + why + "; connection closed");
        return;
    }
    on_replies(data, n);
}

void Connection::on_replies(const char* data, std::size_t n) {
    if (n > 0 && redisReaderFeed(impl_->reader, data, n) != REDIS_OK) {
        fail(make_error_code(errc::protocol_error), "reply from " + endpoint_.where() + " could not be buffered");
        return;
    }
    for (;;) {
        void* raw = nullptr;
        if (redisReaderGetReply(impl_->reader, &raw) != REDIS_OK) {
            const std::string why = impl_->array_too_long
                                        ? "an array of more than " + std::to_string(max_array_elements) + " elements"
                                        : std::string(impl_->reader->errstr);
            fail(make_error_code(errc::protocol_error),
                 "the server at " + endpoint_.where() + " does not speak the Redis protocol (" + why + ")");
            return;
        }
        if (raw == nullptr) return;  // need more bytes
        auto* reply = static_cast<redisReply*>(raw);
        Reply copy = copy_reply(reply);
        freeReplyObject(reply);
        const std::string_view kind = copy.type == Reply::Type::array && !copy.elements.empty()
                                          ? std::string_view(copy.elements[0].str)
                                          : std::string_view();
        // A "sunsubscribe" answers our SUNSUBSCRIBE of its channel, or else is news: the server
        // ended the subscription itself (its Cluster slot moved).
        const bool unsolicited = kind == "sunsubscribe" && copy.elements.size() >= 2 &&
                                 (pending_.empty() || pending_.front().unsubscribing != copy.elements[1].str);
        if (on_push_ && (kind == "message" || kind == "smessage" || unsolicited)) {
            on_push_(std::move(copy));
            if (state_ != State::ready && state_ != State::connecting) return;
            continue;
        }
        if (pending_.empty()) {
            fail(make_error_code(errc::protocol_error), "unexpected reply from " + endpoint_.where());
            return;
        }
        ReplyHandler handler = std::move(pending_.front().handler);
        pending_.pop_front();
        handler({}, std::move(copy));
        if (state_ != State::ready && state_ != State::connecting) return;
    }
}

void Connection::arm_timer() {
    // One wait at a time, for the oldest command's deadline; when it ends, the next oldest is
    // waited for. Replies never touch the timer: deadlines only grow along the queue.
    if (state_ != State::ready || impl_->command_timer_armed || pending_.empty()) return;
    impl_->command_timer_armed = true;
    impl_->command_timer.expires_at(pending_.front().deadline);
    impl_->command_timer.async_wait([this, self = shared_from_this()](boost::system::error_code ec) {
        impl_->command_timer_armed = false;
        if (ec || state_ != State::ready || pending_.empty()) return;
        if (pending_.front().deadline <= Clock::now()) {
            fail(make_error_code(errc::unavailable),
                 "no reply from Redis at " + endpoint_.where() + " within command_timeout");
            return;
        }
        arm_timer();
    });
}

void Connection::arm_health(Clock::time_point at) {
    // A link that died without a reset (a NAT's or load balancer's idle timeout, a host gone)
    // is silent: a command in flight finds out within command_timeout, and an idle connection
    // asks, with a PING, once it has heard nothing for health_check. On a subscriber RESP2
    // answers "*2 pong ''", on a command connection "+PONG": either is a reply to the PING.
    if (endpoint_.health_check.count() <= 0 || state_ != State::ready) return;
    impl_->health_timer.expires_at(at);
    impl_->health_timer.async_wait([this, self = shared_from_this()](boost::system::error_code ec) {
        if (ec || state_ != State::ready) return;
        const auto now = Clock::now();
        const auto due = impl_->last_heard + endpoint_.health_check;
        if (now < due) return arm_health(due);
        // Nothing heard for health_check. A command in flight has its own deadline (arm_timer);
        // else the PING's.
        if (pending_.empty()) send({"PING"}, [](std::error_code, const Reply&) {});
        arm_health(now + endpoint_.health_check);
    });
}

}  // namespace keylock::redis
