// SPDX-License-Identifier: BSL-1.0
// The mutual-exclusion checker of the reliability tests: threads and forked processes record
// every hold of a lock (key, fencing token, start, end, whether it was lost), and check() then
// proves the two promises of a lock against that history:
//
//   1. no two holds of one key that were not lost overlap in time;
//   2. fencing tokens of one key increase in the order the holds that were not lost began, and
//      no two holds of a key (lost or not) share a token.
//
// The records live in an anonymous shared mapping, so children forked after the checker was
// made append to the same history; times are CLOCK_MONOTONIC (one clock for every process of
// the machine). A hold is "lost" if its guard said so at the end (its lease ran out or was
// taken): such a hold may overlap the next one, which is what fencing tokens are for. Its start
// says little about when it was granted (its lock may have gone before its holder looked), so it
// counts for (2) only through the uniqueness of its token.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <keylock/guard.hpp>

namespace keylock::test {

class ExclusionChecker {
public:
    struct Hold {
        char key[48];
        std::uint64_t token;
        std::int64_t start_ns, end_ns;
        bool lost;
    };

    explicit ExclusionChecker(std::size_t capacity = 1 << 20) : capacity_(capacity) {
        bytes_ = sizeof(Shared) + capacity * sizeof(Hold);
        void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::runtime_error("ExclusionChecker: mmap failed");
        shared_ = new (p) Shared{};
        holds_ = reinterpret_cast<Hold*>(static_cast<char*>(p) + sizeof(Shared));
    }
    ~ExclusionChecker() { ::munmap(shared_, bytes_); }
    ExclusionChecker(const ExclusionChecker&) = delete;
    ExclusionChecker& operator=(const ExclusionChecker&) = delete;

    static std::int64_t now_ns() noexcept {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count();
    }

    /// Records one hold. `start_ns` is taken right after the lock was granted, `end_ns` right
    /// before it is released (so the recorded interval lies inside the real one).
    void record(std::string_view key, std::uint64_t token, std::int64_t start_ns, std::int64_t end_ns,
                bool lost) noexcept {
        const std::size_t i = shared_->count.fetch_add(1, std::memory_order_relaxed);
        if (i >= capacity_) {
            shared_->overflow.store(true, std::memory_order_relaxed);
            return;
        }
        Hold& h = holds_[i];
        std::memset(h.key, 0, sizeof h.key);
        std::memcpy(h.key, key.data(), std::min(key.size(), sizeof h.key - 1));
        h.token = token;
        h.start_ns = start_ns;
        h.end_ns = end_ns;
        h.lost = lost;
    }

    /// A hold as a scope: made after the guard is granted, records when it goes (before the
    /// guard's own release).
    class Scope {
    public:
        Scope(ExclusionChecker& c, const Guard& g) : c_(c), g_(g), start_(now_ns()) {}
        ~Scope() { c_.record(g_.key(), g_.fencing_token(), start_, now_ns(), g_.lost()); }
        Scope(const Scope&) = delete;
        Scope& operator=(const Scope&) = delete;

    private:
        ExclusionChecker& c_;
        const Guard& g_;
        std::int64_t start_;
    };

    std::size_t size() const noexcept { return std::min(shared_->count.load(), capacity_); }
    std::size_t lost() const noexcept {
        std::size_t n = 0;
        for (std::size_t i = 0; i < size(); ++i) n += holds_[i].lost;
        return n;
    }

    /// The violations of the two promises (empty: none), each as one line.
    std::vector<std::string> check() const {
        std::vector<std::string> problems;
        if (shared_->overflow.load()) problems.emplace_back("more holds than the checker's capacity");
        std::map<std::string, std::vector<Hold>> by_key;
        for (std::size_t i = 0; i < size(); ++i) by_key[holds_[i].key].push_back(holds_[i]);
        for (auto& [key, holds] : by_key) {
            std::sort(holds.begin(), holds.end(), [](const Hold& a, const Hold& b) { return a.start_ns < b.start_ns; });
            std::map<std::uint64_t, int> uses;
            for (const Hold& h : holds) {
                if (++uses[h.token] == 2)
                    problems.push_back("key '" + key + "': token " + std::to_string(h.token) + " issued twice");
            }
            const Hold* last_kept = nullptr;   // the latest-ending hold that was not lost
            const Hold* last_begun = nullptr;  // the latest-starting hold that was not lost
            for (const Hold& h : holds) {
                if (h.lost) continue;
                if (last_begun != nullptr && h.token <= last_begun->token) {
                    problems.push_back("key '" + key + "': token " + std::to_string(h.token) + " began " +
                                       std::to_string((h.start_ns - last_begun->start_ns) / 1000) + " us after token " +
                                       std::to_string(last_begun->token));
                }
                last_begun = &h;
                if (last_kept != nullptr && h.start_ns < last_kept->end_ns) {
                    problems.push_back("key '" + key + "': holds with tokens " + std::to_string(last_kept->token) +
                                       " and " + std::to_string(h.token) + " overlap by " +
                                       std::to_string((last_kept->end_ns - h.start_ns) / 1000) + " us");
                }
                if (last_kept == nullptr || h.end_ns > last_kept->end_ns) last_kept = &h;
            }
        }
        return problems;
    }

private:
    struct Shared {
        std::atomic<std::size_t> count{0};
        std::atomic<bool> overflow{false};
    };
    std::size_t capacity_;
    std::size_t bytes_;
    Shared* shared_;
    Hold* holds_;
};

}  // namespace keylock::test
