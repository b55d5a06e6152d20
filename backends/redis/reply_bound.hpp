// SPDX-License-Identifier: BSL-1.0
// ReplyBound: frames the RESP2 bytes a server sends, before hiredis parses them, and says where a
// reply breaks keylock's bounds on what one reply may make it hold (connection.cpp; the fuzz
// model in fuzz/reply_model.hpp runs it over a payload in one piece).
//
// hiredis buffers a bulk string until all of it has come and allocates an array's element
// pointers as soon as it has read the array's length: a server that announces "$1099511627776"
// or "*2147483647", or that streams a line without end, would make it hold unbounded memory.
// A reply is refused (the connection then fails with `protocol_error`) as soon as
//   - the bytes received of it, plus the rest of a bulk string announced, plus 3 bytes (the
//     shortest RESP value, "+\r\n") for each element announced but not begun, exceed max_bytes;
//   - the elements announced by all of its arrays exceed max_elements;
//   - its arrays nest deeper than max_depth;
//   - a type byte is not one of RESP2's ('+', '-', ':', '$', '*': keylock never asks for RESP3),
//     or an array announces a negative length other than -1 (hiredis refuses that too).
// Lengths are read leniently (an optional sign, digits up to the first '\r'; anything else is
// taken for -1, a nil): hiredis (0.14.1 as Debian ships it, and 1.x) refuses every length that
// is not a plain decimal number, so whatever it accepts is framed here as it frames it. A line
// ends at "\r\n"; a bulk string's body is followed by two bytes, whatever they are.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace keylock::redis {

class ReplyBound {
public:
    ReplyBound(std::uint64_t max_bytes, std::uint64_t max_elements, std::size_t max_depth = 16)
        : max_bytes_(max_bytes), max_elements_(max_elements), max_depth_(max_depth) {}

    /// Scans `n` more bytes. Returns how many of them come before the byte at which a reply broke
    /// a bound (all `n` while none did); from then on broken() says how, and nothing more is
    /// scanned.
    std::size_t scan(const char* data, std::size_t n) {
        if (!why_.empty()) return 0;
        for (std::size_t i = 0; i < n; ++i) {
            if (!step(data[i])) return i;
        }
        return n;
    }

    /// Why a reply was refused ("a bulk string of 1099511627776 bytes, more than max_reply_bytes
    /// (67108864)"); empty while none was.
    const std::string& broken() const noexcept { return why_; }
    /// The reply broke no size bound but RESP2 itself (a type byte, an array's length).
    bool not_resp2() const noexcept { return not_resp2_; }

private:
    enum class State { type, line, length, body };
    static constexpr std::uint64_t huge = std::uint64_t{1} << 62;  // lengths saturate here

    bool refuse(std::string why) {
        why_ = std::move(why);
        return false;
    }
    bool too_long() {
        return refuse("a reply of more than max_reply_bytes (" + std::to_string(max_bytes_) + " bytes)");
    }

    /// One byte; false when it breaks a bound.
    bool step(char c) {
        ++received_;
        switch (state_) {
            case State::type:
                if (!open_.empty()) {
                    --open_.back();  // this element has begun: its 3 bytes are counted as they come
                    announced_ -= 3;
                }
                if (c == '+' || c == '-' || c == ':') {
                    state_ = State::line;
                } else if (c == '$' || c == '*') {
                    state_ = State::length;
                    array_ = c == '*';
                    negative_ = digits_done_ = bad_ = false;
                    length_ = 0;
                    at_line_start_ = true;
                } else {
                    not_resp2_ = true;
                    const auto byte = static_cast<unsigned char>(c);
                    return refuse(byte >= 0x20 && byte < 0x7f
                                      ? std::string("got '").append(1, c).append("' as a reply type byte")
                                      : "got byte " + std::to_string(byte) + " as a reply type byte");
                }
                cr_ = false;
                break;
            case State::line:
                if (cr_ && c == '\n') return element_done();
                cr_ = c == '\r';
                break;
            case State::length:
                if (cr_ && c == '\n') return length_read();
                cr_ = c == '\r';
                if (c == '\r') {
                    digits_done_ = true;
                } else if (!digits_done_) {
                    if (at_line_start_ && (c == '-' || c == '+')) {
                        negative_ = c == '-';
                    } else if (c >= '0' && c <= '9') {
                        length_ = length_ >= huge / 10 ? huge : length_ * 10 + static_cast<std::uint64_t>(c - '0');
                    } else {
                        bad_ = true;
                    }
                }
                at_line_start_ = false;
                break;
            case State::body:
                --announced_;
                if (--body_left_ == 0) return element_done();
                break;
        }
        if (received_ + announced_ > max_bytes_) return too_long();
        return true;
    }

    /// The end of a '$' or '*' line.
    bool length_read() {
        const bool nil = bad_ || (negative_ && length_ != 0);
        if (array_) {
            if (nil && !bad_ && length_ != 1) {
                not_resp2_ = true;
                return refuse("an array of negative length");
            }
            if (nil || length_ == 0) return element_done();
            if (length_ > max_elements_ - elements_) {
                return refuse("more than " + std::to_string(max_elements_) + " array elements in one reply");
            }
            if (open_.size() == max_depth_)
                return refuse("arrays nested more than " + std::to_string(max_depth_) + " deep");
            elements_ += length_;
            announced_ += 3 * length_;
            open_.push_back(length_);
            state_ = State::type;
            if (received_ + announced_ > max_bytes_) return too_long();
            return true;
        }
        if (nil) return element_done();
        if (length_ > max_bytes_) {
            return refuse("a bulk string of " +
                          (length_ == huge ? std::string("more than 2^62") : std::to_string(length_)) +
                          " bytes, more than max_reply_bytes (" + std::to_string(max_bytes_) + ")");
        }
        body_left_ = length_ + 2;
        announced_ += body_left_;
        state_ = State::body;
        if (received_ + announced_ > max_bytes_) return too_long();
        return true;
    }

    /// A value is complete: close the arrays it completes; at the top, the reply is.
    bool element_done() {
        state_ = State::type;
        while (!open_.empty() && open_.back() == 0) open_.pop_back();
        if (open_.empty()) received_ = announced_ = elements_ = 0;
        return true;
    }

    std::uint64_t max_bytes_, max_elements_;
    std::size_t max_depth_;
    State state_ = State::type;
    std::vector<std::uint64_t> open_;  // the elements still to begin, of each array open
    std::uint64_t received_ = 0;       // bytes of the current reply
    std::uint64_t announced_ = 0;      // bytes announced of it, not yet received (see above)
    std::uint64_t elements_ = 0;       // announced by its arrays
    std::uint64_t length_ = 0, body_left_ = 0;
    bool array_ = false, negative_ = false, digits_done_ = false, bad_ = false;
    bool at_line_start_ = false, cr_ = false, not_resp2_ = false;
    std::string why_;
};

}  // namespace keylock::redis
