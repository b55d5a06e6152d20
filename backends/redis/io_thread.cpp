// SPDX-License-Identifier: BSL-1.0
// The Redis backend's I/O thread: its run loop, and its end at close().
#include "io_thread.hpp"

#include <pthread.h>

namespace keylock::redis {

void IoThread::start(const char* name, std::function<void()> last) {
    last_ = std::move(last);
    thread_ = std::thread([this] { run(); });
#if defined(__linux__)
    pthread_setname_np(thread_.native_handle(), name);
#else
    (void)name;
#endif
}

void IoThread::run() {
    io_.run();
    // Stopped by stop(): after close(), with nothing left. If close() detached us, we are the
    // last one to touch the owner (once close() is done with thread_).
    bool detached = false;
    {
        std::lock_guard lk(mu_);
        stopped_ = true;
        detached = detached_;
    }
    cv_.notify_all();
    if (detached) {
        detach_done_.wait();
        const auto last = std::move(last_);  // it deletes the owner, and this with it
        last();
    }
}

bool IoThread::close(bool in_use, std::chrono::milliseconds wait) {
    bool detach = false;
    {
        std::unique_lock lk(mu_);
        if (!in_use) cv_.wait_for(lk, wait, [this] { return stopped_; });
        detach = detached_ = !stopped_;
    }
    if (!detach) {
        thread_.join();
        return true;
    }
    thread_.detach();
    detach_done_.set();  // the last touch of this: the thread may delete it from here on
    return false;
}

}  // namespace keylock::redis
