// SPDX-License-Identifier: BSL-1.0
// A TCP proxy for fault tests, on Boost.Asio: clients connect to port(), bytes go on to the
// target port on loopback, and the test can make the network between them bad:
//
//   delay(d)   every chunk waits d before it is passed on, in both directions
//   stall()    nothing is passed on any more, and connections stay open (a half-open peer, a
//              partition without resets); resume() passes on what was held, and goes on
//   cut()      every connection is closed at once (new ones are still accepted)
//   blackhole(n) connection n (0 = the first accepted; none given: every connection open now)
//              stays open but passes nothing on any more, either way,
//              for good (no reset, no FIN: a NAT that forgot the flow, a host that vanished);
//              what comes in is read and dropped. Connections accepted later work as usual.
//   delay_replies(n, d)  what the server sends on connection n (0 = the first accepted) waits d
//              more: one connection slowed, the others not (e.g. commands but not notifications)
//
// One thread runs the proxy; the controls may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

namespace keylock::test {

class TcpProxy {
public:
    explicit TcpProxy(int target_port)
        : target_(boost::asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(target_port)),
          acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}) {
        accept();
        thread_ = std::thread([this] { io_.run(); });
    }
    ~TcpProxy() {
        io_.stop();
        thread_.join();
        boost::system::error_code ignored;  // the loop has stopped: this thread may touch it all
        acceptor_.close(ignored);
        close_all();
    }
    TcpProxy(const TcpProxy&) = delete;
    TcpProxy& operator=(const TcpProxy&) = delete;

    int port() const { return acceptor_.local_endpoint().port(); }

    void delay(std::chrono::milliseconds d) { delay_ms_.store(d.count()); }
    void delay_replies(int connection, std::chrono::milliseconds d) {
        slow_ms_.store(d.count());
        slow_connection_.store(connection);
    }
    /// The next reply that comes from the server on `connection` is not passed on: the
    /// connection is closed instead (the request ran; its answer is lost).
    void drop_next_reply(int connection) { drop_reply_of_.store(connection); }
    void stall() { stalled_.store(true); }
    void resume() {
        stalled_.store(false);
        boost::asio::post(io_, [this] {
            for (const auto& link : links_) link->flush_held();
        });
    }
    void cut() {
        std::promise<void> done;
        boost::asio::post(io_, [this, &done] {
            close_all();
            done.set_value();
        });
        done.get_future().wait();
    }
    /// `connection`: only that one (0 = the first accepted); -1: all.
    void blackhole(int connection = -1) {
        std::promise<void> done;
        boost::asio::post(io_, [this, &done, connection] {
            for (const auto& link : links_) {
                if (connection < 0 || link->number == connection) link->blackholed = true;
            }
            done.set_value();
        });
        done.get_future().wait();
    }
    /// Connections accepted so far.
    int accepted() const { return accepted_.load(); }

private:
    using tcp = boost::asio::ip::tcp;

    /// One direction of one connection: reads from `from`, writes to `to`, in order.
    struct Pipe : std::enable_shared_from_this<Pipe> {
        Pipe(TcpProxy& p, std::shared_ptr<tcp::socket> f, std::shared_ptr<tcp::socket> t, int number, bool replies)
            : proxy(p), from(std::move(f)), to(std::move(t)), replies_of(replies ? number : -1), number(number) {}
        void start() { read(); }
        void read() {
            auto self = shared_from_this();
            from->async_read_some(boost::asio::buffer(buf), [this, self](boost::system::error_code ec, std::size_t n) {
                if (blackholed) {
                    if (!ec) read();  // dropped; an end or error is not passed on either
                    return;
                }
                if (ec) return close();
                if (int expected = replies_of;
                    replies_of >= 0 && proxy.drop_reply_of_.compare_exchange_strong(expected, -1)) {
                    return close();
                }
                auto chunk = std::make_shared<std::string>(buf.data(), n);
                auto d = std::chrono::milliseconds(proxy.delay_ms_.load());
                if (replies_of >= 0 && replies_of == proxy.slow_connection_.load()) {
                    d += std::chrono::milliseconds(proxy.slow_ms_.load());
                }
                if (d.count() == 0) return pass(chunk);
                auto timer = std::make_shared<boost::asio::steady_timer>(proxy.io_, d);
                timer->async_wait([this, self, timer, chunk](boost::system::error_code) { pass(chunk); });
            });
        }
        /// Passes a chunk on (or holds it while stalled), then reads the next.
        void pass(const std::shared_ptr<std::string>& chunk) {
            if (blackholed) return read();
            if (proxy.stalled_.load()) {
                held.push_back(chunk);
                return;  // no more reads until resumed: the sender's window fills, as on a dead link
            }
            write(chunk);
        }
        void write(const std::shared_ptr<std::string>& chunk) {
            auto self = shared_from_this();
            boost::asio::async_write(*to, boost::asio::buffer(*chunk),
                                     [this, self, chunk](boost::system::error_code ec, std::size_t) {
                                         if (ec) return close();
                                         read();
                                     });
        }
        void flush_held() {
            if (held.empty() || blackholed) return;
            auto all = std::make_shared<std::string>();
            for (auto& c : held) *all += *c;
            held.clear();
            write(all);
        }
        void close() {
            boost::system::error_code ignored;
            from->close(ignored);
            to->close(ignored);
        }
        TcpProxy& proxy;
        std::shared_ptr<tcp::socket> from, to;
        int replies_of;  // server to client: the connection's number; client to server: -1
        int number;      // the connection's
        std::array<char, 16384> buf{};
        std::deque<std::shared_ptr<std::string>> held;
        bool blackholed = false;  // io thread only
    };

    void accept() {
        acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket client) {
            if (ec) return;
            const int number = accepted_.fetch_add(1);
            auto c = std::make_shared<tcp::socket>(std::move(client));
            auto s = std::make_shared<tcp::socket>(io_);
            s->async_connect(target_, [this, c, s, number](boost::system::error_code e) {
                if (e) {
                    boost::system::error_code ignored;
                    c->close(ignored);
                    return;
                }
                // Chunks go on as they come, without Nagle's wait for the peer's (delayed) ACK.
                boost::system::error_code ignored;
                c->set_option(tcp::no_delay(true), ignored);
                s->set_option(tcp::no_delay(true), ignored);
                auto up = std::make_shared<Pipe>(*this, c, s, number, false),
                     down = std::make_shared<Pipe>(*this, s, c, number, true);
                links_.insert(up);
                links_.insert(down);
                up->start();
                down->start();
            });
            accept();
        });
    }
    void close_all() {
        for (const auto& link : links_) link->close();
        links_.clear();
    }

    boost::asio::io_context io_;
    tcp::endpoint target_;
    tcp::acceptor acceptor_;
    std::set<std::shared_ptr<Pipe>> links_;  // io thread only
    std::thread thread_;
    std::atomic<long> delay_ms_{0};
    std::atomic<bool> stalled_{false};
    std::atomic<int> slow_connection_{-1};
    std::atomic<long> slow_ms_{0};
    std::atomic<int> accepted_{0};
    std::atomic<int> drop_reply_of_{-1};
};

}  // namespace keylock::test
