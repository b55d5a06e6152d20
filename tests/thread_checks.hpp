// SPDX-License-Identifier: BSL-1.0
// Catch2 v2 assertions are not thread-safe: threads record their checks here and the test's
// own thread reports them after joining.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

class ThreadChecks {
public:
    ThreadChecks() = default;
    ThreadChecks(const ThreadChecks&) = delete;
    ThreadChecks& operator=(const ThreadChecks&) = delete;
    void check(bool ok, const char* what, const char* file, int line) {
        if (ok) return;
        std::lock_guard lk(mu_);
        failures_.push_back(std::string(file) + ":" + std::to_string(line) + ": " + what);
    }
    /// Call from the test's thread once the other threads are joined.
    void report() {
        std::lock_guard lk(mu_);
        for (const auto& f : failures_) FAIL_CHECK("in a thread: " << f);
        failures_.clear();
    }
    ~ThreadChecks() { report(); }

private:
    std::mutex mu_;
    std::vector<std::string> failures_;
};

#define THREAD_CHECK(checks, ...) (checks).check(static_cast<bool>(__VA_ARGS__), #__VA_ARGS__, __FILE__, __LINE__)
