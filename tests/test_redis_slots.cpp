// SPDX-License-Identifier: BSL-1.0
// Redis Cluster hash slots (backends/redis/slots.hpp): known vectors, the hash tag rules,
// binary keys, the per-slot tag table, and agreement with a real cluster-enabled redis-server.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "backends/redis/slots.hpp"
#include "redis_server.hpp"

using keylock::redis::key_slot;
using keylock::redis::slot_count;
using keylock::redis::slot_tag;
using keylock::test::RedisServer;
using namespace std::string_view_literals;

namespace {

/// `key` as one RESP command, so that any byte (NUL, space, CR, LF) reaches the server intact:
/// RedisServer::command() appends the final CRLF and Redis parses a leading '*' as RESP.
std::string keyslot_command(std::string_view key) {
    std::string out = "*3\r\n$7\r\nCLUSTER\r\n$7\r\nKEYSLOT\r\n$" + std::to_string(key.size()) + "\r\n";
    out.append(key);
    return out;
}

/// "{tag}suffix". (Appended piece by piece: GCC 12 warns, wrongly, about `"{" + std::string(...)`.)
std::string tagged(std::string_view tag, std::string_view suffix = {}) {
    std::string key;
    key.reserve(tag.size() + suffix.size() + 2);
    key += '{';
    key += tag;
    key += '}';
    key += suffix;
    return key;
}

/// What CLUSTER KEYSLOT answers for `key`: an integer reply, ":<slot>".
std::string expected_reply(std::string_view key) {
    std::string reply = ":";  // appended, not ":" + ...: GCC 12 warns falsely (-Wrestrict) on that
    reply += std::to_string(key_slot(key));
    return reply;
}

}  // namespace

TEST_CASE("key_slot matches Redis Cluster's known vectors", "[redis][slots]") {
    CHECK(key_slot("123456789") == 0x31C3);  // the CRC16/XMODEM check value, below 16384
    CHECK(key_slot("123456789") == 12739);
    CHECK(key_slot("foo") == 12182);
    CHECK(key_slot("bar") == 5061);
    CHECK(key_slot("user1000") == 3443);
    CHECK(key_slot("") == 0);
}

TEST_CASE("key_slot hashes only the hash tag when there is one", "[redis][slots]") {
    // Related keys share a slot through their tag.
    CHECK(key_slot("{user1000}.following") == key_slot("user1000"));
    CHECK(key_slot("{user1000}.followers") == key_slot("user1000"));
    CHECK(key_slot("{a}") == key_slot("a"));

    // An empty first tag: the whole key is hashed, even with a later non-empty "{...}".
    CHECK(key_slot("foo{}{bar}") == 8363);
    CHECK(key_slot("foo{}{bar}") != key_slot("bar"));
    CHECK(key_slot("{}") == 15257);

    // From the first '{' to the first '}' after it.
    CHECK(key_slot("foo{{bar}}zap") == key_slot("{bar"));
    CHECK(key_slot("foo{{bar}}zap") == 4015);
    CHECK(key_slot("foo{bar}{zap}") == key_slot("bar"));

    // No '}' after the first '{': the whole key.
    CHECK(key_slot("}{") == 12793);
    CHECK(key_slot("{") == 4092);
    CHECK(key_slot("foo{bar") != key_slot("bar"));
}

TEST_CASE("key_slot is binary-safe", "[redis][slots]") {
    CHECK(key_slot("a\0b"sv) == 8383);
    CHECK(key_slot("a\0"sv) == 14363);
    CHECK(key_slot("key\0with\0nuls"sv) == 7852);
    CHECK(key_slot("\0{a\0b}\0"sv) == key_slot("a\0b"sv));
    CHECK(key_slot("x{\0}y"sv) == key_slot("\0"sv));
}

TEST_CASE("slot_tag gives every slot a short tag that hashes to it", "[redis][slots]") {
    std::size_t longest = 0;
    std::vector<std::size_t> per_length(8);
    for (unsigned slot = 0; slot < slot_count; ++slot) {
        const std::string_view tag = slot_tag(static_cast<std::uint16_t>(slot));
        INFO("slot " << slot << " tag '" << tag << "'");
        REQUIRE(!tag.empty());
        REQUIRE(tag.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyz") == std::string_view::npos);
        REQUIRE(key_slot(tagged(tag)) == slot);
        REQUIRE(key_slot(tagged(tag, ":fence")) == slot);
        REQUIRE(key_slot("keylock:fence:" + tagged(tag)) == slot);  // as the backend names its counter
        REQUIRE(tag.size() < per_length.size());
        longest = std::max(longest, tag.size());
        ++per_length[tag.size()];
    }
    // [0-9a-z] strings of up to 3 characters reach all but 85 slots; 4 reach them all.
    CHECK(longest == 4);
    CHECK(per_length[1] == 36);
    CHECK(per_length[2] == 1104);
    CHECK(per_length[3] == 15159);
    CHECK(per_length[4] == 85);

    // The shortest tag, and of those the first in ASCII order.
    CHECK(slot_tag(key_slot("0")) == "0");
    CHECK(slot_tag(key_slot("z")) == "z");
    CHECK(slot_tag(0) == "1bz");

    // Stable: the same view every time.
    CHECK(slot_tag(42).data() == slot_tag(42).data());
    CHECK(slot_tag(slot_count).empty());
}

TEST_CASE("key_slot agrees with CLUSTER KEYSLOT of a real server", "[redis][slots]") {
    // The nodes.conf path is relative: redis-server resolves it in its --dir, the server's
    // own temporary directory (not known before the server is constructed).
    RedisServer server({"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"});

    SECTION("the known vectors") {
        for (const std::string_view key : {"123456789"sv, "foo"sv, "bar"sv, "{user1000}.following"sv, "foo{}{bar}"sv,
                                           "foo{{bar}}zap"sv, "foo{bar}{zap}"sv, "{"sv, "}{"sv}) {
            CAPTURE(key);
            CHECK(server.command("CLUSTER KEYSLOT " + std::string(key)) == expected_reply(key));
        }
    }

    SECTION("random keys of [a-z0-9{}]") {
        // Braces are frequent so that every hash tag rule is met often.
        std::mt19937 rng(20240517);
        const std::string_view plain = "abcdefghijklmnopqrstuvwxyz0123456789";
        std::uniform_int_distribution<std::size_t> length(1, 24), pick_plain(0, plain.size() - 1), kind(0, 7);
        for (int i = 0; i < 500; ++i) {
            std::string key;
            for (std::size_t n = length(rng); n > 0; --n) {
                const std::size_t k = kind(rng);
                key += k == 0 ? '{' : k == 1 ? '}' : plain[pick_plain(rng)];
            }
            CAPTURE(key);
            REQUIRE(server.command("CLUSTER KEYSLOT " + key) == expected_reply(key));
        }
    }

    SECTION("random binary keys") {
        std::mt19937 rng(7);
        std::uniform_int_distribution<std::size_t> length(0, 16);
        std::uniform_int_distribution<int> byte(0, 255);
        for (int i = 0; i < 100; ++i) {
            std::string key;
            for (std::size_t n = length(rng); n > 0; --n) key += static_cast<char>(byte(rng));
            if (i % 4 == 0) key = std::string(1, '\0') + tagged(key);  // with a (binary) tag
            CAPTURE(i);
            REQUIRE(server.command(keyslot_command(key)) == expected_reply(key));
        }
    }

    SECTION("slot tags") {
        for (unsigned slot = 0; slot < slot_count; slot += 97) {
            const std::string key = "keylock:fence:" + tagged(slot_tag(static_cast<std::uint16_t>(slot)));
            CAPTURE(key);
            REQUIRE(server.command("CLUSTER KEYSLOT " + key) == expected_reply(key));
            REQUIRE(key_slot(key) == slot);
        }
    }
}
