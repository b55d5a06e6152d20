// SPDX-License-Identifier: BSL-1.0
// Redis Sentinel, for redis+sentinel:// URLs: finds the master's address by asking the sentinels,
// and hears of failovers (+switch-master) as they happen.
//
// Single-threaded, like Connection: every member function runs on the io_context's thread, and
// so do the callbacks.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "connection.hpp"
#include "redis_config.hpp"

namespace keylock::redis {

class SentinelLocator : public std::enable_shared_from_this<SentinelLocator> {
public:
    /// `config` must name sentinels and a master (see redis_config.hpp).
    SentinelLocator(boost::asio::io_context& io, RedisConfig config);
    SentinelLocator(const SentinelLocator&) = delete;
    SentinelLocator& operator=(const SentinelLocator&) = delete;
    ~SentinelLocator() = default;

    using Located = std::function<void(std::error_code, std::string why, HostPort master)>;

    /// Asks the sentinels in turn, the last one that answered first, for the master's address
    /// (`SENTINEL get-master-addr-by-name`). Fails with `unavailable` and every sentinel's
    /// reason when none can say. Each sentinel gets an equal share of connect_timeout.
    void locate(Located done);

    /// Subscribes to +switch-master on a sentinel and calls `on_switch` with the new address
    /// whenever our master is switched. A broken subscription moves to the next sentinel, at
    /// once the first time and then after a second between tries.
    void watch(std::function<void(const HostPort&)> on_switch);

    /// Ends the watch and any lookup under way (their callbacks are not called).
    void close();

private:
    struct Lookup;
    void ask(const std::shared_ptr<Lookup>& lookup);
    void subscribe();
    Endpoint sentinel_endpoint(std::size_t index) const;

    boost::asio::io_context& io_;
    const RedisConfig config_;
    std::size_t preferred_ = 0;  // the sentinel that answered last
    std::size_t watching_ = 0;   // the sentinel the watch is on (or goes to next)
    std::shared_ptr<Connection> watch_;
    boost::asio::steady_timer rewatch_;
    std::function<void(const HostPort&)> on_switch_;
    std::vector<std::weak_ptr<Lookup>> lookups_;  // under way, for close()
    bool closed_ = false;
};

/// Parses a +switch-master message ("<name> <old ip> <old port> <new ip> <new port>"); returns
/// whether it is about `master`, with the new address in `to`.
bool parse_switch_master(const std::string& message, const std::string& master, HostPort& to);

}  // namespace keylock::redis
