// SPDX-License-Identifier: BSL-1.0
// Whether this test binary runs under a sanitizer (ASan or TSan), for the few tests whose load
// or whose memory measurements depend on it: sanitizers slow every access down several times,
// and keep freed memory aside or map shadow memory, so a resident size says nothing there.
#pragma once

namespace keylock::test {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

/// `full` in a plain build, `sanitized` under a sanitizer.
template <class T>
constexpr T unless_sanitized(T full, T sanitized) {
    return kSanitized ? sanitized : full;
}

}  // namespace keylock::test
