// SPDX-License-Identifier: BSL-1.0
// WAIT after a write, for `wait_replicas`: whether that many replicas have what was written.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <system_error>

#include "connection.hpp"
#include "redis_config.hpp"

namespace keylock::redis {

class Replication {
public:
    explicit Replication(const RedisConfig& config)
        : wanted_(config.wait_replicas),
          count_(std::to_string(config.wait_replicas)),
          ms_(std::to_string(config.wait_timeout.count())) {}

    /// After a write on `conn`, waits for `wait_replicas` replicas to have it (WAIT on the same
    /// connection: it counts that client's writes only), then calls `then` with an empty
    /// string, or with why they have not. At once, with nothing to wait for, when
    /// `wait_replicas` is 0.
    void after(const std::shared_ptr<Connection>& conn, std::function<void(std::string)> then) const {
        if (wanted_ == 0) return then({});
        if (!conn) return then("the connection it was written on is gone");
        conn->send({"WAIT", count_, ms_}, [this, then = std::move(then)](std::error_code ec, const Reply& r) {
            if (ec) return then("WAIT got no answer");
            if (r.type != Reply::Type::integer) return then("Redis answered WAIT with '" + r.str + "'");
            if (r.integer < wanted_) {
                return then(std::to_string(r.integer) + " of " + count_ +
                            " replicas acknowledged it within wait_timeout");
            }
            then({});
        });
    }

    /// Whether writes are followed by a WAIT.
    bool waits() const noexcept { return wanted_ != 0; }

private:
    int wanted_;
    std::string count_, ms_;
};

}  // namespace keylock::redis
