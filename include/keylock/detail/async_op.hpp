// SPDX-License-Identifier: BSL-1.0
// keylock/detail/async_op.hpp — the Asio glue behind KeyedLockRegistry::async_lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/system/error_code.hpp>

#include <keylock/detail/backend.hpp>
#include <keylock/error.hpp>
#include <keylock/guard.hpp>

namespace keylock::detail {

/// One pending async_lock: the queue node, the user's handler and the work guard that keeps the
/// handler's executor busy while the operation waits.
///
/// Lifetime: the operation owns a reference to the backend until it is freed (when its handler
/// runs, or is destroyed unrun with its executor), so the backend stays open for as long as a
/// cancellation can reach the operation through its slot, even after the last registry copy is
/// gone. The slot's handler asks the backend to cancel only while the operation is pending:
/// once complete() has begun, the backend may have let go of the operation. A cancellation is
/// emitted from the handler's executor (Asio's rule), so it never runs concurrently with the
/// posted completion that clears the slot and frees the operation.
template <class Handler>
class AsyncLockOp final : public AsyncWaiter {
public:
    using Executor = boost::asio::associated_executor_t<Handler, boost::asio::system_executor>;

    AsyncLockOp(std::shared_ptr<Backend> backend, Handler&& handler)
        : backend_(std::move(backend)),
          handler_(std::move(handler)),
          work_(boost::asio::make_work_guard(
              boost::asio::get_associated_executor(handler_, boost::asio::system_executor()))) {}

    static void start(const std::shared_ptr<Backend>& backend, Handler&& handler, const std::string& key, Mode mode,
                      std::uint32_t permits, std::uint32_t limit) {
        auto* op = new AsyncLockOp(backend, std::move(handler));
        op->mode_ = mode;
        op->permits_ = permits;
        auto slot = boost::asio::get_associated_cancellation_slot(op->handler_);
        if (slot.is_connected()) {
            // Any kind of cancellation may end a wait: nothing has happened yet that the
            // caller would have to undo.
            slot.assign([op](boost::asio::cancellation_type type) {
                if (type != boost::asio::cancellation_type::none) op->cancel();
            });
        }
        try {
            std::error_code ec = check_key(*backend, key);
            if (!ec && mode == Mode::permits && (limit == 0 || permits == 0 || permits > limit)) {
                ec = make_error_code(errc::invalid_argument);
            }
            if (ec) {
                op->complete(ec, {});  // posted to the handler's executor, as any completion
                return;
            }
            Request request;
            request.key = key;
            request.mode = mode;
            request.permits = permits;
            request.limit = limit;
            op->pending_.store(true, std::memory_order_release);
            backend->async_acquire(request, op);
        } catch (...) {  // out of memory before the operation was queued: nothing to complete
            if (slot.is_connected()) slot.clear();
            delete op;
            throw;
        }
    }

    using AsyncWaiter::complete;
    void complete(std::error_code ec, Acquired acquired, std::string_view /*why*/) noexcept override {
        // From here on the backend may have let go of the operation: no cancel() reaches it.
        pending_.store(false, std::memory_order_release);
        // The result travels inside the posted function, so if the executor is destroyed
        // without running it, the guard inside releases the lock.
        Guard guard(backend_.get(), acquired, mode_, permits_);
        auto ex = work_.get_executor();
        // Our own claim on the executor's context, until post() has returned: otherwise the
        // handler could run and its context finish (and be destroyed) while post() is still
        // signalling it from this thread.
        auto busy = boost::asio::make_work_guard(ex);
        boost::asio::post(ex, [self = std::unique_ptr<AsyncLockOp>(this), ec, guard = std::move(guard)]() mutable {
            auto slot = boost::asio::get_associated_cancellation_slot(self->handler_);
            if (slot.is_connected()) slot.clear();
            Handler handler = std::move(self->handler_);
            self.reset();
            // A cancelled wait reports Asio's own code, as Asio's operations do.
            const boost::system::error_code result =
                ec == errc::cancelled ? boost::system::error_code(boost::asio::error::operation_aborted)
                                      : boost::system::error_code(ec);
            std::move(handler)(result, std::move(guard));
        });
    }

private:
    /// From the slot's handler, on the handler's executor.
    void cancel() noexcept {
        if (pending_.load(std::memory_order_acquire)) backend_->cancel(this);
    }

    // Keeps the backend (and so everything cancel() touches) alive while the operation is: the
    // registry's last copy may go before the operation does.
    std::shared_ptr<Backend> backend_;
    // Queued in the backend and not yet completed. Read by cancel(), written by start() and
    // complete() (which the backend may call on its own thread).
    std::atomic<bool> pending_{false};
    Mode mode_ = Mode::exclusive;
    std::uint32_t permits_ = 1;
    Handler handler_;
    boost::asio::executor_work_guard<Executor> work_;
};

struct AsyncLockInitiation {
    std::shared_ptr<Backend> backend;

    template <class Handler>
    void operator()(Handler&& handler, const std::string& key, Mode mode = Mode::exclusive, std::uint32_t permits = 1,
                    std::uint32_t limit = 0) const {
        AsyncLockOp<std::decay_t<Handler>>::start(backend, std::forward<Handler>(handler), key, mode, permits, limit);
    }
};

}  // namespace keylock::detail
