#include "connection.hpp"

#include <hiredis/hiredis.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <keylock/error.hpp>

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

std::error_code make_ec(errc e) { return make_error_code(e); }

/// hiredis allocates an array's element pointers as soon as it has read the array's length: a
/// peer announcing "*2147483647" (a broken or hostile server, anything that is not Redis) would
/// make it allocate 16 GiB at once. keylock's replies are small (CLUSTER SLOTS, the longest, has
/// at most 16384 entries): a longer array is a protocol error.
constexpr int max_array_elements = 1 << 20;

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

/// Appends `argv` as one RESP command (binary-safe: every argument is length-prefixed).
void append_command(std::string& out, const std::vector<std::string_view>& argv) {
    std::vector<const char*> ptrs;
    std::vector<std::size_t> lens;
    ptrs.reserve(argv.size());
    lens.reserve(argv.size());
    for (auto a : argv) {
        ptrs.push_back(a.data());
        lens.push_back(a.size());
    }
    char* cmd = nullptr;
    const int len = redisFormatCommandArgv(&cmd, static_cast<int>(argv.size()), ptrs.data(), lens.data());
    if (len < 0) throw std::bad_alloc();
    out.append(cmd, static_cast<std::size_t>(len));
    redisFreeCommand(cmd);
}

}  // namespace

struct Connection::Impl {
    explicit Impl(asio::io_context& io)
        : io(io), socket(io), resolver(io), timer(io), command_timer(io), reader(create_reader(&array_too_long)) {}
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
        resolver.cancel();
        transport_up = nullptr;  // it holds the connection: no cycle may outlive a failure
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
    bool flush_posted = false;  // a flush of out_ is queued behind the handlers now ready
    // The reader failed on an array longer than max_array_elements (hiredis says "Out of memory").
    bool array_too_long = false;
    redisReader* reader;
    std::array<char, 16 * 1024> buffer{};
    std::function<void(std::error_code, std::string)> on_connect;
    std::vector<std::pair<std::vector<std::string>, ReplyHandler>> early;  // sent before ready
    std::vector<asio::ip::tcp::endpoint> addresses;                        // of the host, tried in turn
    std::function<void()> transport_up;                                    // what follows a TCP connect
};

Connection::Connection(asio::io_context& io, Endpoint endpoint)
    : impl_(std::make_unique<Impl>(io)), endpoint_(std::move(endpoint)) {
    if (impl_->reader == nullptr) throw std::bad_alloc();
}

Connection::~Connection() { impl_->shut(); }

void Connection::connect(std::function<void(std::error_code, std::string)> handler) {
    state_ = State::connecting;
    impl_->on_connect = std::move(handler);
    auto self = shared_from_this();

    impl_->timer.expires_after(endpoint_.connect_timeout);
    impl_->timer.async_wait([this, self](boost::system::error_code ec) {
        if (ec || state_ != State::connecting) return;
        fail(make_ec(errc::unavailable), "no connection to Redis at " + endpoint_.where() + " within connect_timeout");
    });

    // After the transport is up: TLS handshake, then PING (and AUTH, SELECT) through the
    // pipeline; the connection is ready when the last of them answers.
    auto handshake = [this, self] {
        if (!impl_->tls) {
            // Plain sockets are written directly (see start_write).
            boost::system::error_code ec;
            impl_->socket.non_blocking(true, ec);
            if (ec) {
                fail(make_ec(errc::unavailable),
                     "cannot set up the socket to " + endpoint_.where() + ": " + ec.message());
                return;
            }
        }
        start_read();
        auto commands = std::make_shared<std::vector<std::vector<std::string>>>();
        if (!endpoint_.password.empty()) {
            if (endpoint_.user.empty()) {
                commands->push_back({"AUTH", endpoint_.password});
            } else {
                commands->push_back({"AUTH", endpoint_.user, endpoint_.password});
            }
        }
        if (endpoint_.db != 0) commands->push_back({"SELECT", std::to_string(endpoint_.db)});
        if (endpoint_.master_only) commands->push_back({"ROLE"});
        commands->push_back({"PING"});
        const std::size_t total = commands->size();
        auto answered = std::make_shared<std::size_t>(0);
        // Written together (pipelined); checked in order.
        for (std::size_t i = 0; i < total; ++i) {
            const std::string verb = (*commands)[i][0];
            append_command(out_, std::vector<std::string_view>((*commands)[i].begin(), (*commands)[i].end()));
            pending_.push_back({[this, self, verb, answered, total](std::error_code ec, Reply r) {
                                    if (ec || state_ != State::connecting) return;
                                    if (r.is_error()) {
                                        const bool auth = verb == "AUTH" || r.str.rfind("NOAUTH", 0) == 0 ||
                                                          r.str.rfind("WRONGPASS", 0) == 0 ||
                                                          r.str.rfind("NOPERM", 0) == 0;
                                        fail(make_ec(auth ? errc::auth_failed : errc::backend_error),
                                             "Redis at " + endpoint_.where() + " refused " + verb + ": " + r.str);
                                        return;
                                    }
                                    if (verb == "ROLE" && (r.type != Reply::Type::array || r.elements.empty() ||
                                                           r.elements[0].str != "master")) {
                                        // E.g. an old master that has come back as a replica:
                                        // the owner asks the sentinels again.
                                        fail(make_ec(errc::unavailable),
                                             "Redis at " + endpoint_.where() + " is not a master (ROLE says '" +
                                                 (r.elements.empty() ? std::string() : r.elements[0].str) + "')");
                                        return;
                                    }
                                    if (++*answered < total) return;
                                    state_ = State::ready;
                                    impl_->timer.cancel();
                                    auto early = std::move(impl_->early);
                                    for (auto& [args, h] : early) {
                                        std::vector<std::string_view> v(args.begin(), args.end());
                                        send(v, std::move(h));
                                    }
                                    arm_timer();
                                    if (auto h = std::exchange(impl_->on_connect, nullptr)) h({}, {});
                                },
                                Clock::time_point::max(),
                                {}});
        }
        start_write();
    };

    auto transport_up = [this, self, handshake] {
        if (!endpoint_.tls) {
            handshake();
            return;
        }
        try {
            auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
            if (!endpoint_.ca_file.empty()) {
                ctx->load_verify_file(endpoint_.ca_file);
            } else {
                ctx->set_default_verify_paths();
            }
            if (!endpoint_.cert_file.empty()) ctx->use_certificate_chain_file(endpoint_.cert_file);
            if (!endpoint_.key_file.empty()) ctx->use_private_key_file(endpoint_.key_file, asio::ssl::context::pem);
            if (endpoint_.verify) {
                ctx->set_verify_mode(asio::ssl::verify_peer);
                if (endpoint_.unix_path.empty())
                    ctx->set_verify_callback(asio::ssl::host_name_verification(endpoint_.host));
            } else {
                ctx->set_verify_mode(asio::ssl::verify_none);
            }
            impl_->ssl = std::move(ctx);
            impl_->tls = std::make_unique<TlsStream>(std::move(impl_->socket), *impl_->ssl);
            // SNI carries host names only (RFC 6066): not for an IP address.
            boost::system::error_code not_ip;
            (void)asio::ip::make_address(endpoint_.host, not_ip);
            if (endpoint_.unix_path.empty() && not_ip) {
                SSL_set_tlsext_host_name(impl_->tls->native_handle(), endpoint_.host.c_str());
            }
        } catch (const boost::system::system_error& e) {
            fail(make_ec(errc::invalid_option),
                 "TLS setup for " + endpoint_.where() + " failed: " + e.code().message());
            return;
        }
        impl_->tls->async_handshake(
            asio::ssl::stream_base::client, [this, self, handshake](boost::system::error_code ec) {
                if (state_ != State::connecting) return;
                if (ec) {
                    fail(make_ec(errc::unavailable),
                         "TLS handshake with " + endpoint_.where() + " failed: " + ec.message());
                    return;
                }
                handshake();
            });
    };

    auto go = [this, self, transport_up] {
        if (!endpoint_.unix_path.empty()) {
            asio::local::stream_protocol::endpoint ep(endpoint_.unix_path);
            impl_->socket.async_connect(
                Socket::endpoint_type(ep), [this, self, transport_up](boost::system::error_code ec) {
                    if (state_ != State::connecting) return;
                    if (ec) {
                        fail(make_ec(errc::unavailable),
                             "cannot connect to Redis at " + endpoint_.where() + ": " + ec.message());
                        return;
                    }
                    transport_up();
                });
            return;
        }
        impl_->resolver.async_resolve(
            endpoint_.host, std::to_string(endpoint_.port),
            [this, self, transport_up](boost::system::error_code ec,
                                       const asio::ip::tcp::resolver::results_type& results) {
                if (state_ != State::connecting) return;
                if (ec || results.empty()) {
                    fail(make_ec(errc::unavailable),
                         "cannot resolve Redis host " + endpoint_.where() + ": " + ec.message());
                    return;
                }
                impl_->addresses.clear();
                for (const auto& r : results) impl_->addresses.push_back(r.endpoint());
                impl_->transport_up = transport_up;
                connect_address(0, {});
            });
    };
    if (!locate_) return go();
    locate_([this, self, go](std::error_code ec, const std::string& why, std::string host, std::uint16_t port) {
        if (state_ != State::connecting) return;
        if (ec) return fail(ec, why);
        endpoint_.host = std::move(host);
        endpoint_.port = port;
        go();
    });
}

void Connection::connect_address(std::size_t i, boost::system::error_code last) {
    if (i == impl_->addresses.size()) {
        impl_->transport_up = nullptr;
        fail(make_ec(errc::unavailable), "cannot connect to Redis at " + endpoint_.where() + ": " + last.message());
        return;
    }
    boost::system::error_code ignored;
    impl_->socket.close(ignored);
    auto self = shared_from_this();
    impl_->socket.async_connect(Socket::endpoint_type(impl_->addresses[i]),
                                [this, self, i](boost::system::error_code ec) {
                                    if (state_ != State::connecting) return;
                                    if (ec) {
                                        connect_address(i + 1, ec);
                                        return;
                                    }
                                    impl_->socket.set_option(asio::ip::tcp::no_delay(true), ec);
                                    auto up = std::exchange(impl_->transport_up, nullptr);
                                    up();
                                });
}

void Connection::send(const std::vector<std::string_view>& argv, ReplyHandler handler) {
    if (state_ == State::failed || state_ == State::closed) {
        asio::post(impl_->io, [h = std::move(handler)] { h(make_ec(errc::unavailable), {}); });
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
    for (auto& p : pending) p.handler(make_ec(errc::cancelled), {});
    for (auto& e : early) e.second(make_ec(errc::cancelled), {});
    if (auto h = std::exchange(impl_->on_connect, nullptr)) h(make_ec(errc::cancelled), "connection closed");
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
    const std::error_code failed = was_ready ? make_ec(errc::unavailable) : ec;
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
    fail(make_ec(errc::unavailable), "write to Redis at " + endpoint_.where() + " failed: " + ec.message());
}

void Connection::read_failed(boost::system::error_code ec) {
    fail(make_ec(errc::unavailable), ec == asio::error::eof
                                         ? "Redis at " + endpoint_.where() + " closed the connection"
                                         : "read from Redis at " + endpoint_.where() + " failed: " + ec.message());
}

void Connection::start_read() {
    auto self = shared_from_this();
    impl_->with_stream([&](auto& stream) {
        stream.async_read_some(asio::buffer(impl_->buffer), [this, self](boost::system::error_code ec, std::size_t n) {
            if (state_ != State::ready && state_ != State::connecting) return;
            if (ec) return read_failed(ec);
            on_bytes(impl_->buffer.data(), n);
            if (state_ == State::ready || state_ == State::connecting) start_read();
        });
    });
}

void Connection::on_bytes(const char* data, std::size_t n) {
    if (redisReaderFeed(impl_->reader, data, n) != REDIS_OK) {
        fail(make_ec(errc::protocol_error), "reply from " + endpoint_.where() + " could not be buffered");
        return;
    }
    for (;;) {
        void* raw = nullptr;
        if (redisReaderGetReply(impl_->reader, &raw) != REDIS_OK) {
            const std::string why = impl_->array_too_long
                                        ? "an array of more than " + std::to_string(max_array_elements) + " elements"
                                        : std::string(impl_->reader->errstr);
            fail(make_ec(errc::protocol_error),
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
            fail(make_ec(errc::protocol_error), "unexpected reply from " + endpoint_.where());
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
            fail(make_ec(errc::unavailable), "no reply from Redis at " + endpoint_.where() + " within command_timeout");
            return;
        }
        arm_timer();
    });
}

}  // namespace keylock::redis
