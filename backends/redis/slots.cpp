// SPDX-License-Identifier: BSL-1.0
#include "slots.hpp"

#include <array>
#include <cstddef>
#include <string>
#include <vector>

namespace keylock::redis {

namespace {

/// CRC16-CCITT (XMODEM) table: polynomial 0x1021, no reflection; Redis Cluster's hash.
constexpr std::array<std::uint16_t, 256> crc16_table = [] {
    std::array<std::uint16_t, 256> table{};
    for (unsigned byte = 0; byte < 256; ++byte) {
        unsigned crc = byte << 8;
        for (int bit = 0; bit < 8; ++bit) crc = (crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1;
        table[byte] = static_cast<std::uint16_t>(crc);
    }
    return table;
}();

constexpr std::uint16_t crc16_update(std::uint16_t crc, unsigned char byte) noexcept {
    return static_cast<std::uint16_t>((crc << 8) ^ crc16_table[((crc >> 8) ^ byte) & 0xff]);
}

constexpr std::uint16_t crc16(std::string_view data) noexcept {
    std::uint16_t crc = 0;  // XMODEM: initial value 0, no final xor
    for (const char c : data) crc = crc16_update(crc, static_cast<unsigned char>(c));
    return crc;
}

static_assert(crc16("123456789") == 0x31C3, "CRC16/XMODEM check value");
static_assert((slot_count & (slot_count - 1)) == 0, "slot_count is a power of two");

constexpr std::uint16_t to_slot(std::uint16_t crc) noexcept {
    return static_cast<std::uint16_t>(crc & (slot_count - 1));
}

// In ASCII order, so that the first tag found for a slot is also the smallest of its length.
constexpr std::string_view tag_alphabet = "0123456789abcdefghijklmnopqrstuvwxyz";

/// Every tag back to back, in slot order; the tag of slot s is chars[offsets[s], offsets[s + 1]).
struct TagTable {
    std::string chars;
    std::vector<std::uint32_t> offsets;
};

/// Walks every extension of `prefix` (whose CRC is `crc`) by `more` characters, in order, and
/// gives each slot without a tag the first one that hashes to it. The CRC is extended one
/// character at a time, so each string costs one table lookup. Returns false once all slots
/// have a tag, to stop the walk.
bool find_tags(std::string& prefix, std::uint16_t crc, std::size_t more, std::vector<std::string>& tags,
               std::size_t& missing) {
    if (more == 0) {
        std::string& tag = tags[to_slot(crc)];
        if (tag.empty()) {
            tag = prefix;
            --missing;
        }
        return missing != 0;
    }
    for (const char c : tag_alphabet) {
        prefix.push_back(c);
        const bool go_on = find_tags(prefix, crc16_update(crc, static_cast<unsigned char>(c)), more - 1, tags, missing);
        prefix.pop_back();
        if (!go_on) return false;
    }
    return true;
}

/// Tries all tags of length 1, then 2, and so on, until every slot has one. Strings of
/// [0-9a-z] cover every slot at length 4 (length 3 leaves 85 slots without a tag).
TagTable build_tag_table() {
    std::vector<std::string> tags(slot_count);  // short: no allocation per tag
    std::size_t missing = slot_count;
    std::string prefix;
    for (std::size_t length = 1; missing != 0; ++length) find_tags(prefix, 0, length, tags, missing);

    TagTable table;
    table.offsets.reserve(slot_count + 1);
    for (const std::string& tag : tags) {
        table.offsets.push_back(static_cast<std::uint32_t>(table.chars.size()));
        table.chars += tag;
    }
    table.offsets.push_back(static_cast<std::uint32_t>(table.chars.size()));
    table.chars.shrink_to_fit();
    return table;
}

}  // namespace

std::uint16_t key_slot(std::string_view key) noexcept {
    // Hash tag: only "{...}" is hashed, so that related keys can share a slot. An empty "{}"
    // does not count, and then the whole key is hashed.
    if (const auto open = key.find('{'); open != std::string_view::npos) {
        if (const auto close = key.find('}', open + 1); close != std::string_view::npos && close > open + 1) {
            key = key.substr(open + 1, close - open - 1);
        }
    }
    return to_slot(crc16(key));
}

std::string_view slot_tag(std::uint16_t slot) noexcept {
    if (slot >= slot_count) return {};
    static const TagTable table = build_tag_table();  // thread-safe lazy initialisation
    const std::uint32_t begin = table.offsets[slot];
    return std::string_view(table.chars).substr(begin, table.offsets[slot + 1u] - begin);
}

std::string fence_key_of(std::string_view prefix, std::string_view lock_key) {
    return std::string(prefix).append("fence:{").append(slot_tag(key_slot(lock_key))).append("}");
}

}  // namespace keylock::redis
