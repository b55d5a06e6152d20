// SPDX-License-Identifier: BSL-1.0
// tools/common.hpp — what `keylock` and `keylock demo` share: the backend URL they default to,
// their exit statuses (sysexits.h), and how they read options and report usage errors.
#pragma once

#include <sysexits.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <boost/program_options/cmdline.hpp>
#include <boost/program_options/options_description.hpp>
#include <boost/program_options/parsers.hpp>
#include <boost/program_options/variables_map.hpp>

#include <keylock/error.hpp>
#include <keylock/registry.hpp>

namespace keylock::tools {

/// The backend when the command line names none: $KEYLOCK_URL, else local:// (as
/// KeyedLockRegistry::from_env() chooses; the tools need the URL itself, not a registry).
inline std::string default_url() { return detail::url_from_env(detail::kUrlVariable, detail::kDefaultUrl); }

/// The exit status for a keylock error: a bad URL or option is a configuration error
/// (EX_CONFIG), and so is a key in use in another mode (a lock and a semaphore, two limits); a
/// bad key or argument, or an operation the backend lacks, a usage error (EX_USAGE); a backend
/// that cannot be reached or that refuses the command EX_UNAVAILABLE; any other code gives
/// `other`.
inline int exit_status_of(std::error_code ec, int other) {
    if (ec == errc::invalid_url || ec == errc::unknown_scheme || ec == errc::unknown_option ||
        ec == errc::invalid_option) {
        return EX_CONFIG;
    }
    if (ec == errc::invalid_key || ec == errc::key_too_long || ec == errc::not_supported ||
        ec == errc::invalid_argument) {
        return EX_USAGE;
    }
    // mode_conflict: the callers disagree on what the key is, a mistake to fix, not a wait.
    if (ec == errc::mode_conflict) return EX_CONFIG;
    if (ec == errc::unavailable || ec == errc::auth_failed || ec == errc::protocol_error || ec == errc::backend_error) {
        return EX_UNAVAILABLE;
    }
    return other;
}

/// Long options as `--name VALUE` or `--name=VALUE`, and `-h`. No abbreviations: an option
/// added later must not change what an existing command line means.
inline constexpr int option_style = boost::program_options::command_line_style::unix_style &
                                    ~boost::program_options::command_line_style::allow_guessing;

/// Moves the operands (the words that are no option or option value; Program_options leaves
/// them unnamed when given no positional_options_description) out of `parsed`, in order.
inline std::vector<std::string> take_operands(boost::program_options::parsed_options& parsed) {
    std::vector<std::string> operands;
    std::vector<boost::program_options::option> named;
    for (boost::program_options::option& o : parsed.options) {
        if (o.string_key.empty()) {
            operands.insert(operands.end(), o.value.begin(), o.value.end());
        } else {
            named.push_back(std::move(o));
        }
    }
    parsed.options = std::move(named);
    return operands;
}

/// Prints `program: message` on stderr. A keylock error's message starts with "keylock: ",
/// which the program's name already says: it is left out.
inline void print_error(const char* program, std::string_view message) {
    if (message.substr(0, 9) == "keylock: ") message.remove_prefix(9);
    std::fprintf(stderr, "%s: %.*s\n", program, static_cast<int>(message.size()), message.data());
}

/// Reports a usage error as `COMMAND: PROBLEM` and a line pointing to `COMMAND --help`, and
/// returns EX_USAGE. `synopsis` is what follows COMMAND on the command line.
inline int usage_error(const char* command, const char* synopsis, const std::string& problem) {
    std::fprintf(stderr, "%s: %s\nusage: %s %s; see `%s --help`\n", command, problem.c_str(), command, synopsis,
                 command);
    return EX_USAGE;
}

}  // namespace keylock::tools
