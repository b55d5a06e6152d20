// SPDX-License-Identifier: BSL-1.0
// Waiting in tests for something another thread or process does, without a fixed sleep.
#pragma once

#include <chrono>
#include <thread>

namespace keylock::test {

/// Polls `pred` every `poll` until it holds (true) or `limit` has passed (false).
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10),
                std::chrono::milliseconds poll = std::chrono::milliseconds(5)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(poll);
    }
    return true;
}

}  // namespace keylock::test
