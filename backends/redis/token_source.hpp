// SPDX-License-Identifier: BSL-1.0
// The Redis backend's owner tokens: 128 random bits each, from OpenSSL's CSPRNG.
#pragma once

#include <openssl/rand.h>

#include <iterator>
#include <random>
#include <string>

#include <boost/algorithm/hex.hpp>

namespace keylock::redis {

/// Owner tokens, one per acquisition: 128 random bits as 32 hex digits. The bits come from
/// OpenSSL's CSPRNG, 64 tokens per call. (Each backend has its own, used on its I/O thread; a
/// forked child cannot use its parent's backend, so it never repeats the parent's tokens.)
class TokenSource {
public:
    std::string next() {
        if (used_ == kTokens) refill();
        const unsigned char* bytes = bytes_ + used_++ * 16;
        std::string out;
        out.reserve(32);
        boost::algorithm::hex_lower(bytes, bytes + 16, std::back_inserter(out));
        return out;
    }

private:
    void refill() {
        if (RAND_bytes(bytes_, sizeof bytes_) != 1) {
            // Never expected; fall back to the OS's generator rather than failing a lock.
            std::random_device rd;
            for (auto& b : bytes_) b = static_cast<unsigned char>(rd());
        }
        used_ = 0;
    }
    static constexpr int kTokens = 64;
    unsigned char bytes_[kTokens * 16];
    int used_ = kTokens;
};

}  // namespace keylock::redis
