// SPDX-License-Identifier: BSL-1.0
// Shared, upgrade and permit holds on Redis (see modal_locks.hpp): per key a FIFO queue whose
// front asks Redis, then waits for a release or half a lease.
#include "modal_locks.hpp"

#include <algorithm>
#include <utility>

#include <keylock/error.hpp>

#include "key_lock.hpp"
#include "lease.hpp"
#include "mode_scripts.hpp"
#include "replies.hpp"
#include "slots.hpp"

namespace keylock::redis {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

ModalScripts::ModalScripts(bool sharded)
    : acquire_shared(sharded ? scripts::acquire_shared_sharded : scripts::acquire_shared),
      acquire_permits(sharded ? scripts::acquire_permits_sharded : scripts::acquire_permits),
      release_member(sharded ? scripts::release_member_sharded : scripts::release_member),
      convert(sharded ? scripts::convert_sharded : scripts::convert),
      drop_intent(sharded ? scripts::drop_intent_sharded : scripts::drop_intent),
      abandon_member(sharded ? scripts::abandon_member_sharded : scripts::abandon_member) {}

/// One modal request of this process.
struct ModalLocks::Waiter {
    std::uint64_t id = 0;
    detail::AsyncWaiter* op = nullptr;
    Key* key = nullptr;
    detail::Mode mode = detail::Mode::shared;
    std::uint32_t permits = 1;
    std::uint32_t limit = 0;
    RedisHold* from = nullptr;  // a conversion's hold
    detail::Deadline deadline = detail::Deadline::max();
    std::unique_ptr<asio::steady_timer> timer;
    std::string token;        // the owner token of every attempt of this request
    bool in_flight = false;   // an attempt is under way: its answer decides
    bool unanswered = false;  // an attempt went unanswered: a hold may exist under `token`
    bool waited = false;      // could not be granted at once (counts as contended)
    bool intent = false;      // a conversion to exclusive was told to wait: its intent is recorded
    bool expired = false;     // the deadline passed while an attempt was in flight: it decides
    std::error_code ending;   // a cancellation came while an attempt was in flight
};

/// One key with modal requests of this process.
struct ModalLocks::Key {
    Key(asio::io_context& io, std::string k, std::string lk, std::string fk)
        : key(std::move(k)), lock_key(std::move(lk)), fence_key(std::move(fk)), retry(io) {}
    std::string key, lock_key, fence_key;
    std::deque<Waiter*> queue;
    bool attempting = false;            // the front's attempt is in flight
    bool waiting = false;               // held elsewhere: waiting for a release or the retry timer
    bool subscribed = false;            // subscription asked for (confirmed or not)
    bool look_again = false;            // a release, or our subscription, came while an attempt was in flight
    Clock::time_point first_failure{};  // of the current run of unavailable attempts
    asio::steady_timer retry;
};

/// The most requests one attempt asks for: the front of a key's queue and those right behind it
/// that the same script call can grant (shared requests, or permit requests of one limit).
constexpr std::size_t kMaxBatch = 64;

/// A grant of an attempt, to be handed out.
struct ModalLocks::Grant {
    std::uint64_t id = 0;
    std::uint64_t fence = 0;
    std::string member;
};

namespace {

std::string member_name(detail::Mode mode, std::uint32_t permits, std::uint64_t fence, const std::string& owner) {
    std::string m(1, mode == detail::Mode::shared ? 's' : mode == detail::Mode::upgrade ? 'u' : 'p');
    if (mode == detail::Mode::permits) m.append(std::to_string(permits));
    return m.append(":").append(std::to_string(fence)).append(":").append(owner);
}

}  // namespace

ModalLocks::ModalLocks(asio::io_context& io, const RedisConfig& config, Servers& servers, Watchdog& watchdog,
                       const Replication& replication, milliseconds validity, detail::Tally& tally, Host& host)
    : io_(io),
      config_(config),
      servers_(servers),
      watchdog_(watchdog),
      replication_(replication),
      validity_(validity),
      tally_(tally),
      host_(host),
      scripts_(config.topology == Topology::cluster),
      lease_ms_(std::to_string(config.lease.count())) {}

ModalLocks::~ModalLocks() {
    for (auto& [id, w] : waiters_) delete w;  // none after a normal close
}

ModalLocks::Key& ModalLocks::key_state(const std::string& key) {
    auto& slot = keys_[key];
    if (!slot) {
        std::string lock_key = config_.prefix + key;
        std::string fence_key = fence_key_of(config_.prefix, lock_key);
        slot = std::make_unique<Key>(io_, key, std::move(lock_key), std::move(fence_key));
    }
    return *slot;
}

void ModalLocks::enqueue(std::uint64_t id, detail::AsyncWaiter* op, const std::string& key,
                         const detail::Request& request) {
    Key& k = key_state(key);
    auto* w = new Waiter;
    w->id = id;
    w->op = op;
    w->key = &k;
    w->mode = request.mode;
    w->permits = request.permits;
    w->limit = request.limit;
    w->from = static_cast<RedisHold*>(request.from);
    w->deadline = request.deadline;
    waiters_[id] = w;
    tally_.began();
    w->waited = !k.queue.empty() || k.waiting || k.attempting;
    if (w->from != nullptr) {
        // Conversions wait ahead of everyone: the hold is in already (and may be what the
        // others wait for). An attempt in flight for a request now behind it still answers:
        // granted, that request has its hold; told to wait, the conversion asks next.
        const auto first_new =
            std::find_if(k.queue.begin(), k.queue.end(), [](const Waiter* q) { return q->from == nullptr; });
        k.queue.insert(first_new, w);
    } else {
        k.queue.push_back(w);
    }
    if (w->deadline != detail::Deadline::max()) {
        w->timer = std::make_unique<asio::steady_timer>(io_, w->deadline);
        w->timer->async_wait([this, id](boost::system::error_code ec) {
            if (!ec) cancel(id, errc::timeout);
        });
    }
    if (w->from != nullptr && k.waiting) return wake(k);
    pump(k);
}

bool ModalLocks::cancel(std::uint64_t id, errc why) {
    auto it = waiters_.find(id);
    if (it == waiters_.end()) return false;
    Waiter* w = it->second;
    if (w->in_flight) {
        // Its attempt decides, within command_timeout: out of time, a grant is still taken (as a
        // try_lock's one attempt is); cancelled, it is given back (a conversion's is kept: the
        // hold has changed already).
        if (why == errc::timeout) {
            w->expired = true;
        } else if (!w->ending) {
            w->ending = make_error_code(why);
        }
        return true;
    }
    finish(*w->key, w, make_error_code(why));
    return true;
}

/// Starts the front's attempt if none is under way and the key is not waiting for a release.
void ModalLocks::pump(Key& k) {
    if (k.queue.empty() || k.attempting || k.waiting) return;
    attempt(k);
}

/// Asks Redis for the front request, and with it for those right behind it that one script call
/// can grant too (see kMaxBatch): they are granted in order as far as they fit.
void ModalLocks::attempt(Key& k) {
    Waiter* front = k.queue.front();
    k.attempting = true;
    k.look_again = false;
    const auto sent = lease::Clock::now();
    std::vector<std::uint64_t> ids;
    auto reply = [this, key = k.key, &ids, sent]() {
        return [this, key, ids = std::move(ids), sent](std::error_code ec, const Reply& r,
                                                       const std::shared_ptr<Connection>& conn) {
            answered(key, ids, ec, r, conn, sent);
        };
    };
    if (front->from != nullptr) {
        front->in_flight = true;
        ids.push_back(front->id);
        if (front->token.empty()) front->token = owner_of(front->from->token);
        const char* target = front->mode == detail::Mode::exclusive ? "x"
                             : front->mode == detail::Mode::shared  ? "s"
                                                                    : "u";
        servers_.eval(Op::acquire, scripts_.convert, {k.lock_key, k.fence_key},
                      {front->from->token, front->token, lease_ms_, target, k.lock_key}, reply());
        return;
    }
    const bool permits = front->mode == detail::Mode::permits;
    const std::string limit = std::to_string(front->limit);
    std::vector<std::string> counts;  // the permit counts the arguments point into
    counts.reserve(kMaxBatch);
    std::vector<std::string_view> args{lease_ms_, permits                                ? std::string_view(limit)
                                                  : front->mode == detail::Mode::upgrade ? "u"
                                                                                         : "s"};
    std::uint32_t asked = 0;
    for (Waiter* w : k.queue) {
        // Shared requests, or permit requests of one limit, right behind the front and as many
        // permits as the limit at most (more cannot fit); upgrade requests one at a time.
        if (w != front &&
            (w->from != nullptr || w->mode != front->mode || w->mode == detail::Mode::upgrade ||
             w->limit != front->limit || (permits && asked + w->permits > front->limit) || ids.size() == kMaxBatch)) {
            break;
        }
        asked += w->permits;
        if (w->token.empty()) w->token = host_.next_token();
        w->in_flight = true;
        ids.push_back(w->id);
        args.emplace_back(w->token);
        if (permits) args.emplace_back(counts.emplace_back(std::to_string(w->permits)));
        args.emplace_back(w->unanswered ? "1" : "0");  // its hold may be there already
    }
    servers_.eval(Op::acquire, permits ? scripts_.acquire_permits : scripts_.acquire_shared, {k.lock_key, k.fence_key},
                  std::move(args), reply());
}

void ModalLocks::answered(const std::string& key, const std::vector<std::uint64_t>& ids, std::error_code ec,
                          const Reply& r, const std::shared_ptr<Connection>& conn, detail::BootClock::time_point sent) {
    auto kit = keys_.find(key);
    if (kit == keys_.end()) return;  // cannot happen: an attempt keeps its key and its waiters
    Key& k = *kit->second;
    k.attempting = false;
    std::vector<Waiter*> batch;
    for (const std::uint64_t id : ids) {
        Waiter* w = waiters_.at(id);
        w->in_flight = false;
        batch.push_back(w);
    }
    if (ec) {
        const auto now = Clock::now();
        if (k.first_failure == Clock::time_point{}) k.first_failure = now;
        const bool again = retried_unanswered(ec) && now - k.first_failure < config_.endpoint.connect_timeout;
        bool left = false;
        for (Waiter* w : batch) {
            if (w->from == nullptr) w->unanswered = true;  // perhaps it ran: a retry would tell
            if (again && !w->ending && !w->expired) {
                left = true;
            } else {
                drop(k, w, w->ending ? w->ending : ec, r.str);  // gives back what it may hold
            }
        }
        if (left) {
            k.waiting = true;
            return arm_retry(k, milliseconds(50) + host_.jitter());
        }
        pump(k);
        return settle(k);
    }
    k.first_failure = {};
    if (batch.front()->from != nullptr) return converted(k, batch.front(), r, conn, sent);
    if (r.is_error()) {
        // The key's kind, limit or type, or the user's rights: the same for every request of
        // the call (one mode, one limit).
        for (Waiter* w : batch) drop(k, w, error_code_of(r), error_reason(r));
        pump(k);
        return settle(k);
    }
    const auto n = static_cast<long long>(batch.size());
    const long long g =
        r.type == Reply::Type::array && !r.elements.empty() && r.elements[0].type == Reply::Type::integer
            ? r.elements[0].integer
            : -1;
    bool shaped = g >= 0 && g <= n && r.elements.size() == static_cast<std::size_t>(g < n ? g + 2 : g + 1);
    for (std::size_t i = 1; shaped && i < r.elements.size(); ++i) shaped = r.elements[i].type == Reply::Type::integer;
    if (!shaped) {
        for (Waiter* w : batch) drop(k, w, make_error_code(errc::backend_error), "unexpected reply to a mode script");
        pump(k);
        return settle(k);
    }
    const bool late = lease::Clock::now() >= sent + validity_;
    std::vector<Grant> grants;
    for (long long i = 0; i < g; ++i) {
        Waiter* w = batch[static_cast<std::size_t>(i)];
        const auto fence = static_cast<std::uint64_t>(r.elements[static_cast<std::size_t>(i) + 1].integer);
        std::string member = member_name(w->mode, w->permits, fence, w->token);
        if (!w->ending && !late) {
            grants.push_back(Grant{w->id, fence, std::move(member)});
            continue;
        }
        // Cancelled meanwhile, or the answer came after the lease it granted had run out (the
        // member may be gone and the key someone else's): given back. Late, it asks again if it
        // has time.
        give_back(k, member);
        w->token.clear();
        w->unanswered = false;
        if (w->ending) {
            drop(k, w, w->ending);
        } else if (w->expired) {
            drop(k, w, make_error_code(errc::timeout));
        }
    }
    std::vector<std::uint64_t> refused(ids.begin() + g, ids.end());
    const long long ms = g < n ? r.elements.back().integer : 0;
    if (late) {
        for (const std::uint64_t id : refused) {
            Waiter* w = waiters_.at(id);
            if (w->ending || w->expired) drop(k, w, w->ending ? w->ending : make_error_code(errc::timeout));
        }
        pump(k);
        return settle(k);
    }
    std::uint64_t taken = 0;  // permits granted by the call
    for (const Grant& grant : grants) taken += waiters_.at(grant.id)->permits;
    const std::uint32_t full =
        batch.front()->mode == detail::Mode::permits && taken == batch.front()->limit ? batch.front()->limit : 0;
    if (grants.empty() || !replication_.waits()) return conclude(k, grants, refused, ms, full, sent, {});
    k.attempting = true;  // the replicas' confirmation is under way: nothing else asks meanwhile
    for (const Grant& grant : grants) waiters_.at(grant.id)->in_flight = true;
    replication_.after(conn, [this, key = k.key, grants, refused, ms, full, sent](const std::string& why) {
        auto it = keys_.find(key);
        if (it == keys_.end()) return;
        it->second->attempting = false;
        for (const Grant& grant : grants) waiters_.at(grant.id)->in_flight = false;
        conclude(*it->second, grants, refused, ms, full, sent, why);
    });
}

/// Hands out `grants` (or, the replicas not confirming them, `why`, gives them back), then the
/// requests `refused` wait for the key (`ms` until the blocker's lease ends); so does the next
/// permit request of limit `full`, if not 0: the grants took all of them.
void ModalLocks::conclude(Key& k, const std::vector<Grant>& grants, const std::vector<std::uint64_t>& refused,
                          long long ms, std::uint32_t full, detail::BootClock::time_point sent,
                          const std::string& why) {
    for (const Grant& grant : grants) {
        Waiter* w = waiters_.at(grant.id);
        if (!why.empty()) {  // (a conversion's answer never comes here with `why`)
            give_back(k, grant.member);
            drop(k, w, make_error_code(errc::unavailable), "the hold was granted on the master, but " + why);
        } else if (w->ending && w->from == nullptr) {  // a conversion's hold has changed already: kept
            give_back(k, grant.member);
            drop(k, w, w->ending);
        } else {
            hand_out(k, w, grant.fence, grant.member, sent);
        }
    }
    Waiter* first = nullptr;
    for (const std::uint64_t id : refused) {
        auto it = waiters_.find(id);
        if (it == waiters_.end()) continue;  // cancelled while the replicas were asked
        Waiter* w = it->second;
        if (w->ending || w->expired) {
            drop(k, w, w->ending ? w->ending : make_error_code(errc::timeout));
        } else if (first == nullptr) {
            first = w;
        }
    }
    if (first != nullptr) return held(k, first, ms);
    if (full != 0 && !k.queue.empty() && k.queue.front()->from == nullptr &&
        k.queue.front()->mode == detail::Mode::permits && k.queue.front()->limit == full) {
        // The call took every permit: the next asks when one is given back, not at once.
        return held(k, k.queue.front(), config_.lease.count());
    }
    pump(k);
    settle(k);
}

/// The answer to a conversion's attempt.
void ModalLocks::converted(Key& k, Waiter* w, const Reply& r, const std::shared_ptr<Connection>& conn,
                           detail::BootClock::time_point sent) {
    if (r.is_error() && r.str.find("KEYLOCK_DEADLOCK") != std::string::npos) {
        // Shared to exclusive while another holder's conversion waits for this one: the try
        // fails at once, as its deadline would (the hold is unchanged).
        return finish(k, w, make_error_code(errc::timeout));
    }
    if (r.is_error()) return finish(k, w, error_code_of(r), error_reason(r));
    const bool shaped = r.type == Reply::Type::array && !r.elements.empty() &&
                        r.elements[0].type == Reply::Type::integer &&
                        (r.elements[0].integer != 1 || r.elements.size() >= 3U);
    if (!shaped) return finish(k, w, make_error_code(errc::backend_error), "unexpected reply to a mode script");
    const long long outcome = r.elements[0].integer;
    if (outcome == -1) return finish(k, w, make_error_code(errc::not_owner), "the hold to convert was lost");
    if (outcome != 1) return held(k, w, r.elements.size() >= 2 ? r.elements[1].integer : 0);
    const auto fence = static_cast<std::uint64_t>(r.elements[1].integer);
    const std::vector<Grant> grants{Grant{w->id, fence, r.elements[2].str}};
    if (!replication_.waits()) return conclude(k, grants, {}, 0, 0, sent, {});
    k.attempting = true;  // the replicas' confirmation is under way: nothing else asks meanwhile
    w->in_flight = true;
    replication_.after(conn, [this, key = k.key, grants, sent](const std::string& why) {
        auto it = keys_.find(key);
        if (it == keys_.end()) return;
        it->second->attempting = false;
        waiters_.at(grants.front().id)->in_flight = false;
        if (why.empty()) return conclude(*it->second, grants, {}, 0, 0, sent, {});
        // A conversion's hold has changed already: it is kept, and the error reported.
        finish(*it->second, waiters_.at(grants.front().id), make_error_code(errc::unavailable),
               "the hold was granted on the master, but " + why);
    });
}

/// Gives `w` its new hold (its conversion's, or a new grant).
void ModalLocks::hand_out(Key& k, Waiter* w, std::uint64_t fence, const std::string& member,
                          detail::BootClock::time_point sent) {
    auto* h = new RedisHold;
    h->key = k.key;
    h->token = member;
    h->fence = fence;
    h->mode = w->mode;
    h->member = w->mode != detail::Mode::exclusive;
    h->modal = true;
    h->valid_until(sent + validity_);
    watchdog_.add(h);
    if (w->from != nullptr) {
        host_.retire(w->from);  // replaced by `h`
        w->from = nullptr;
    }
    w->unanswered = false;
    w->intent = false;  // a conversion to exclusive that got in took its intent with it
    w->token.clear();
    drop(k, w, {}, {}, detail::Acquired{h, fence});
}

/// Someone else holds the key for `ms` more (or is waiting ahead, for shared requests): wait for
/// a release, or half a lease at most.
void ModalLocks::held(Key& k, Waiter* w, long long ms) {
    if (w->from != nullptr && w->mode == detail::Mode::exclusive) w->intent = true;
    if (w->ending) return finish(k, w, w->ending);
    if (w->expired) return finish(k, w, make_error_code(errc::timeout));
    for (Waiter* q : k.queue) q->waited = true;
    if (k.queue.front() != w) return pump(k);  // a conversion came in ahead meanwhile: it asks now
    k.waiting = true;
    if (!k.subscribed) {
        // Subscribe first, then ask once more: a release between the attempt and the
        // subscription would otherwise go unheard.
        k.subscribed = true;
        host_.subscribe(k.lock_key, [this, key = k.key](std::error_code ec) {
            auto it = keys_.find(key);
            if (it == keys_.end()) return;
            Key& k = *it->second;
            if (ec == errc::auth_failed) {
                k.subscribed = false;
                while (!k.queue.empty() && !k.queue.front()->in_flight) {
                    finish(k, k.queue.front(), ec,
                           "this user may not subscribe to channel " + k.lock_key +
                               " (waiters hear releases there; see the minimum ACL in docs/configuration.md)");
                    if (!keys_.contains(key)) return;
                }
                return;
            }
            if (ec) {
                k.subscribed = false;  // no notifications for now: look again soon
                if (k.waiting) arm_retry(k, kPollWithoutNotifications + host_.jitter());
                return;
            }
            wake(k);
        });
    }
    if (std::exchange(k.look_again, false)) return arm_retry(k, milliseconds(0));
    const milliseconds half_lease = config_.lease / 2;
    const milliseconds wait = ms < 0 ? milliseconds(1000) : std::min(milliseconds(ms), half_lease);
    arm_retry(k, wait + host_.jitter());
}

/// Ends `w`'s wait with `ec` (or its grant), reports, and lets the next request ask.
void ModalLocks::finish(Key& k, Waiter* w, std::error_code ec, const std::string& why, detail::Acquired acquired) {
    const bool was_front = !k.queue.empty() && k.queue.front() == w;
    drop(k, w, ec, why, acquired);
    if (was_front && k.waiting) return wake(k);  // those behind it may fit now
    pump(k);
    settle(k);
}

/// Ends `w`'s wait with `ec` (or its grant) and reports; the caller lets the next request ask.
void ModalLocks::drop(Key& k, Waiter* w, std::error_code ec, const std::string& why, detail::Acquired acquired) {
    k.queue.erase(std::find(k.queue.begin(), k.queue.end(), w));
    waiters_.erase(w->id);
    if (w->timer) w->timer->cancel();
    if (w->intent) {
        // A conversion to exclusive that gave up: its intent would keep readers out for a lease.
        servers_.eval(Op::release, scripts_.drop_intent, {k.lock_key}, {w->token, k.lock_key},
                      [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
    }
    if (w->unanswered && acquired.hold == nullptr) abandon(k.lock_key, w->token);
    tally_.ended(ec, w->waited);
    const std::unique_ptr<Waiter> done(w);
    host_.complete(w->op, ec, acquired, why);  // a blocking caller may return right after this
}

/// Deletes a grant nobody takes (`member`), if it is still there.
void ModalLocks::give_back(const Key& k, const std::string& member) {
    servers_.eval(Op::release, scripts_.release_member, {k.lock_key}, {member, k.lock_key},
                  [](std::error_code, const Reply&, const std::shared_ptr<Connection>&) {});
}

void ModalLocks::abandon(const std::string& lock_key, const std::string& owner) {
    abandon_hold(io_, servers_, scripts_.abandon_member, lock_key, owner,
                 Clock::now() + config_.endpoint.connect_timeout);
}

/// The key may be free now: the front asks again (after the answer in flight, if any).
void ModalLocks::wake(Key& k) {
    if (k.attempting) {
        k.look_again = true;
        return;
    }
    if (!k.waiting) return;
    k.waiting = false;
    k.retry.cancel();
    pump(k);
    settle(k);
}

void ModalLocks::arm_retry(Key& k, milliseconds after) {
    k.retry.expires_after(after);
    k.retry.async_wait([this, key = k.key](boost::system::error_code ec) {
        if (ec) return;
        auto it = keys_.find(key);
        if (it != keys_.end()) wake(*it->second);
    });
}

/// Drops the key once no request of it is left.
void ModalLocks::settle(Key& k) {
    if (!k.queue.empty() || k.attempting) return;
    k.retry.cancel();
    if (k.subscribed) host_.unsubscribe(k.lock_key);
    keys_.erase(k.key);  // destroys `k`
    if (keys_.empty()) host_.modal_idle();
}

void ModalLocks::notified(const std::string& key) {
    auto it = keys_.find(key);
    if (it != keys_.end()) wake(*it->second);
}

void ModalLocks::unsubscribed(const std::string& key) {
    auto it = keys_.find(key);
    if (it == keys_.end()) return;
    it->second->subscribed = false;
    wake(*it->second);
}

void ModalLocks::notifications_lost() {
    std::vector<std::string> waiting;
    for (auto& [key, k] : keys_) {
        k->subscribed = false;
        if (k->waiting || k->attempting) waiting.push_back(key);
    }
    for (const auto& key : waiting) notified(key);
}

bool ModalLocks::waiting_for(const std::string& key) const { return keys_.contains(key); }

void ModalLocks::close() {
    for (auto& [key, k] : keys_) k->retry.cancel();
}

}  // namespace keylock::redis
