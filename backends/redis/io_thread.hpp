// SPDX-License-Identifier: BSL-1.0
// The Redis backend's I/O thread: one io_context run on a thread of its own, and how that thread
// ends when the backend is closed (joined at once, or detached to delete the backend later).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "src/futex.hpp"

namespace keylock::redis {

class IoThread {
public:
    IoThread() : work_(boost::asio::make_work_guard(io_)) {}
    IoThread(const IoThread&) = delete;
    IoThread& operator=(const IoThread&) = delete;
    ~IoThread() = default;  // after close(): the thread is joined or detached

    boost::asio::io_context& io() noexcept { return io_; }

    /// Runs `f` on the thread.
    template <class F>
    void post(F&& f) {
        boost::asio::post(io_, std::forward<F>(f));
    }

    /// Starts the thread, named `name` (for top, perf, gdb). `last`: what the thread does once
    /// its loop has ended, if close() left it running (it deletes the owner, and this with it).
    void start(const char* name, std::function<void()> last);

    /// On the thread: ends the loop once the handler now running returns.
    void stop() noexcept {
        work_.reset();
        io_.stop();
    }

    /// From the owner's close(), on another thread. Unless `in_use`, waits up to `wait` for the
    /// loop to end (stop() was called, or is about to be: only releases are under way). Returns
    /// true when it has ended and the thread is joined (the owner deletes itself now); false when
    /// the thread was left running, detached, to call `last` when its loop ends.
    bool close(bool in_use, std::chrono::milliseconds wait);

private:
    void run();

    boost::asio::io_context io_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
    std::thread thread_;
    std::function<void()> last_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stopped_ = false;   // the loop has ended (mu_)
    bool detached_ = false;  // close() left the thread to call last_ (mu_)
    // Set by close() once it is done with thread_. An Event, not an atomic's wait/notify: the
    // thread may see it set, delete the owner and this with it, before notify_one() would
    // return; Event::set() does not touch the memory after its store.
    detail::Event detach_done_;
};

}  // namespace keylock::redis
