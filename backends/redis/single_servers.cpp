// SPDX-License-Identifier: BSL-1.0
// One server: standalone, or the master that sentinels name (see servers.hpp, node.hpp).
#include <boost/asio/post.hpp>

#include <keylock/error.hpp>

#include "node.hpp"
#include "replies.hpp"
#include "sentinel.hpp"

namespace keylock::redis {

namespace asio = boost::asio;

namespace {

class SingleServers final : public Servers {
public:
    SingleServers(asio::io_context& io, const RedisConfig& config, Events events)
        : Servers(std::move(events)),
          locator_(config.topology == Topology::sentinel ? std::make_shared<SentinelLocator>(io, config) : nullptr),
          master_name_(config.master_name),
          node_(io, config.endpoint, factory(io, config, locator_)) {
        node_.on_push = [this](const Reply& r) { heard(r); };
        node_.on_subscriber_lost = [this] { lost_notifications(); };
        if (locator_) {
            // A failover the sentinels announce: connections to the old master are dropped, and
            // new ones ask the sentinels where the master is now.
            asio::post(io, [this] {
                locator_->watch([this](const HostPort& to) {
                    node_.fail_unless_at(to, "the sentinels switched master '" + master_name_ + "' to " + to.where());
                });
            });
        }
    }

    void eval(Op /*op*/, const Script& script, std::vector<std::string_view> keys, std::vector<std::string_view> args,
              EvalHandler handler) override {
        node_.run(script, script_args(keys, args), false,
                  [this, handler = std::move(handler)](std::error_code ec, Reply r, std::shared_ptr<Connection> conn) {
                      // Behind sentinels, READONLY means the master has become a replica (a
                      // failover): the connection is dropped, the next one asks the sentinels,
                      // and the command counts as not answered.
                      if (!ec && locator_ && r.is_error() && r.str.starts_with("READONLY")) {
                          const std::string why = "Redis at " + node_.where() + " is a replica now (" + r.str +
                                                  "); asking the sentinels again";
                          node_.fail(why);
                          return handler(make_error_code(errc::unavailable), error_reply(why), std::move(conn));
                      }
                      handler(ec, std::move(r), std::move(conn));
                  });
    }

    void subscribe(const std::string& channel, std::function<void(std::error_code)> done) override {
        node_.subscriber()->send({"SUBSCRIBE", channel}, [done = std::move(done)](std::error_code ec, const Reply& r) {
            done(ec ? ec : r.is_error() ? error_code_of(r) : std::error_code{});
        });
    }

    void unsubscribe(const std::string& channel) override {
        if (auto sub = node_.live_subscriber()) sub->send({"UNSUBSCRIBE", channel}, ignore_reply);
    }

    void close() override {
        if (locator_) locator_->close();
        node_.close();
    }

private:
    static Node::Factory factory(asio::io_context& io, const RedisConfig& config,
                                 const std::shared_ptr<SentinelLocator>& locator) {
        if (!locator) return {};
        return [&io, endpoint = config.endpoint, locator] {
            Endpoint master = endpoint;
            master.master_only = true;  // a server that sentinels name master may still be a replica
            auto c = std::make_shared<Connection>(io, master);
            c->locate_with([locator](const Connection::Located& done) {
                locator->locate([done](std::error_code ec, std::string why, HostPort m) {
                    done(ec, std::move(why), std::move(m.host), m.port);
                });
            });
            return c;
        };
    }

    std::shared_ptr<SentinelLocator> locator_;
    std::string master_name_;
    Node node_;
};

}  // namespace

std::unique_ptr<Servers> make_single_servers(asio::io_context& io, const RedisConfig& config, Servers::Events events) {
    return std::make_unique<SingleServers>(io, config, std::move(events));
}

}  // namespace keylock::redis
