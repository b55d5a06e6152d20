// SPDX-License-Identifier: BSL-1.0
// An entry's key, and the short fixed-size byte copies and compares that it and the per-thread
// cache (thread_cache.hpp) use instead of calls to memcpy and memcmp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace keylock::local {

/// The first and the last sizeof(Word) bytes of n (sizeof(Word) <= n <= 2 sizeof(Word)) bytes:
/// two overlapping loads that cover them all.
template <class Word>
[[gnu::always_inline]] inline void load_ends(const char* p, std::size_t n, Word& first, Word& last) noexcept {
    std::memcpy(&first, p, sizeof(Word));
    std::memcpy(&last, p + n - sizeof(Word), sizeof(Word));
}

template <class Word>
[[gnu::always_inline]] inline void copy_ends(char* to, const char* from, std::size_t n) noexcept {
    Word first, last;
    load_ends(from, n, first, last);
    std::memcpy(to, &first, sizeof(Word));
    std::memcpy(to + n - sizeof(Word), &last, sizeof(Word));
}

template <class Word>
[[gnu::always_inline]] inline bool equal_ends(const char* a, const char* b, std::size_t n) noexcept {
    Word a1, a2, b1, b2;
    load_ends(a, n, a1, a2);
    load_ends(b, n, b1, b2);
    return ((a1 ^ b1) | (a2 ^ b2)) == 0;
}

/// Copies n <= 16 bytes without a call.
[[gnu::always_inline]] inline void copy_small(char* to, const char* from, std::size_t n) noexcept {
    if (n >= 8) {
        copy_ends<std::uint64_t>(to, from, n);
    } else if (n >= 4) {
        copy_ends<std::uint32_t>(to, from, n);
    } else {
        for (std::size_t i = 0; i < n; ++i) to[i] = from[i];
    }
}

/// Whether n bytes at a and b are equal; n <= 16 without a call.
[[gnu::always_inline]] inline bool equal_bytes(const char* a, const char* b, std::size_t n) noexcept {
    if (n > 16) return std::memcmp(a, b, n) == 0;
    if (n >= 8) return equal_ends<std::uint64_t>(a, b, n);
    if (n >= 4) return equal_ends<std::uint32_t>(a, b, n);
    for (std::size_t i = 0; i < n; ++i) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

/// An entry's key: up to 16 bytes inline (most ids), longer ones on the heap. Cheaper to set
/// and compare than a std::string, and the same 32 bytes.
class EntryKey {
public:
    static constexpr std::size_t kInline = 16;

    EntryKey() = default;
    EntryKey(const EntryKey&) = delete;
    EntryKey& operator=(const EntryKey&) = delete;
    ~EntryKey() {
        if (data_ != inline_) delete[] data_;
    }

    std::string_view view() const noexcept { return {data_, size_}; }
    operator std::string_view() const noexcept { return view(); }
    std::size_t capacity() const noexcept { return capacity_; }
    bool operator==(std::string_view k) const noexcept {
        return k.size() == size_ && equal_bytes(data_, k.data(), k.size());
    }

    /// Sets the key; keeps a heap buffer that is large enough.
    [[gnu::always_inline]] void assign(std::string_view k) {
        if (k.size() <= capacity_) [[likely]] {
            if (k.size() <= kInline && data_ == inline_) {
                copy_small(inline_, k.data(), k.size());
            } else {
                std::memcpy(data_, k.data(), k.size());
            }
        } else {
            grow(k.size());
            std::memcpy(data_, k.data(), k.size());
        }
        size_ = static_cast<std::uint32_t>(k.size());
    }

private:
    void grow(std::size_t n) {
        char* fresh = new char[n];  // may throw: the key is then unchanged
        if (data_ != inline_) delete[] data_;
        data_ = fresh;
        capacity_ = static_cast<std::uint32_t>(n);
    }

    char* data_ = inline_;
    std::uint32_t size_ = 0;
    std::uint32_t capacity_ = kInline;
    char inline_[kInline];
};

}  // namespace keylock::local
