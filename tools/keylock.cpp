// SPDX-License-Identifier: BSL-1.0
// keylock — the command-line tool: a flock(1) that works across machines, operator commands,
// and the get-or-create demo. See docs/cli.md.
//
//   keylock exec [--url URL | --url-file PATH] [--timeout D | --no-wait] [--lease D] [--pass-url]
//                [--shared | --limit N [--permits n]] KEY -- CMD [ARG...]
//   keylock exec [OPTIONS] --key KEY [--key KEY...] -- CMD [ARG...]
//   keylock status [--url URL | --url-file PATH] KEY
//   keylock release --force [--url URL | --url-file PATH] KEY
//   keylock demo [...]
//
// Exit statuses follow sysexits.h: 64 usage, 69 backend unavailable, 75 lock not acquired (or
// lost while CMD ran), 78 bad configuration; `exec` otherwise exits with CMD's own status.
// Options are read with Boost.Program_options (docs/design.md says why).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>

#include <keylock/keylock.hpp>

#include "common.hpp"
#include "demo.hpp"
#include "src/config.hpp"

// POSIX declares environ in no header (glibc does in <unistd.h>, with _GNU_SOURCE only).
extern char** environ;  // NOLINT(readability-redundant-declaration): see above

namespace {

namespace po = boost::program_options;
using keylock::errc;
using keylock::tools::default_url;
using keylock::tools::option_style;
using keylock::tools::take_operands;
using keylock::tools::usage_error;

// `exec`'s statuses when CMD cannot be started, as POSIX shells give them.
constexpr int exit_cannot_run = 126;
constexpr int exit_not_found = 127;

/// A usage problem: `keylock <command>: <message>` and a pointer to its --help, then EX_USAGE.
struct UsageError {
    std::string message;
};
/// `--help` among a command's options: its usage on stdout, exit 0.
struct HelpWanted {};

const char* const usage_main = "usage: keylock COMMAND [OPTIONS]\n"
                               "\n"
                               "commands:\n"
                               "  exec     run a command while holding a lock (a flock(1) across machines)\n"
                               "  status   show whether a key is locked, its fencing token and remaining lease\n"
                               "  release  delete a key's lock whoever holds it (--force; for operators)\n"
                               "  demo     the get-or-create race, without and with keylock, in N processes\n"
                               "\n"
                               "`keylock COMMAND --help` describes each. The backend is --url URL or the first line\n"
                               "of --url-file PATH (which keeps a password out of ps), else $KEYLOCK_URL, else\n"
                               "local:// (which exec, status and release refuse: its locks live in one process).\n"
                               "`keylock --version` prints the version; docs/cli.md has the whole manual.\n";

const char* const usage_exec =
    "usage: keylock exec [--url URL | --url-file PATH] [--timeout D | --no-wait] [--lease D]\n"
    "                    [--pass-url] [--shared | --limit N [--permits n]] KEY -- CMD [ARG...]\n"
    "       keylock exec [OPTIONS] --key KEY [--key KEY...] -- CMD [ARG...]\n"
    "\n"
    "Runs CMD while holding the lock of KEY, renewing its lease while CMD runs. CMD sees the\n"
    "lock's fencing token in KEYLOCK_FENCING_TOKEN, and not KEYLOCK_URL (unless --pass-url).\n"
    "The lock is released when CMD ends. Options may also follow KEY. Everything after -- is\n"
    "CMD's, even words that look like options; without --, CMD begins at the first word after\n"
    "KEY that is not an option.\n"
    "\n"
    "  --url URL        the backend (default: $KEYLOCK_URL), e.g. redis://host:6379\n"
    "  --url-file PATH  the backend is the first line of PATH (a password stays out of ps)\n"
    "  --timeout D      give up if the lock is not ours within D (e.g. 500ms, 30s, 2m)\n"
    "  --no-wait        give up at once if someone else holds the lock\n"
    "  --lease D        the lease (overrides the URL's lease option; default 30s)\n"
    "  --pass-url       leave KEYLOCK_URL in CMD's environment (removed by default)\n"
    "  --shared         a shared lock: any number of --shared holders at once, none beside\n"
    "                   a plain (exclusive) holder\n"
    "  --limit N        one of the N permits of KEY (a semaphore: at most N taken at once)\n"
    "  --permits n      with --limit: take n of the N permits (default 1)\n"
    "  -k, --key KEY    lock KEY; repeated, every key or none (exclusive only), in place of\n"
    "                   the KEY operand. CMD sees KEYLOCK_FENCING_TOKENS=T1,T2,... (the tokens\n"
    "                   in --key order) and the first key's in KEYLOCK_FENCING_TOKEN\n"
    "\n"
    "SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to keylock are passed on to CMD. If the lease is\n"
    "lost while CMD runs (the lock may be someone else's now), CMD gets SIGTERM and keylock\n"
    "exits 75 once it has ended.\n"
    "\n"
    "exit status: CMD's own (128+N if a signal N ended it); 75 if the lock was not acquired in\n"
    "time or was lost; 64 usage error; 69 backend unreachable; 78 bad URL, or KEY in use in\n"
    "another mode (a lock and a semaphore, or two --limit values); 126/127 if CMD cannot be\n"
    "run / was not found.\n";

const char* const usage_status =
    "usage: keylock status [--url URL | --url-file PATH] KEY\n"
    "\n"
    "Prints one line: `free`, or `held token=N ttl_ms=N` (the holder's fencing token and the\n"
    "lease it has left; token=0 if the value was not written by keylock or the backend is\n"
    "redlock://, ttl_ms=-1 if the lock has no lease).\n"
    "\n"
    "  --url URL        the backend (default: $KEYLOCK_URL), e.g. redis://host:6379\n"
    "  --url-file PATH  the backend is the first line of PATH (a password stays out of ps)\n"
    "\n"
    "exit status: 0; 64 usage error; 69 backend unreachable; 78 bad URL.\n";

const char* const usage_release =
    "usage: keylock release --force [--url URL | --url-file PATH] KEY\n"
    "\n"
    "Deletes the lock of KEY whoever holds it, and wakes its waiters. The holder is not told\n"
    "until its next lease renewal (then its guard is lost): use this only for a holder you know\n"
    "is dead and whose lease is too long to wait out. Prints `released` or `free` (nothing to\n"
    "release).\n"
    "\n"
    "  --force          required: says it is meant\n"
    "  --url URL        the backend (default: $KEYLOCK_URL), e.g. redis://host:6379\n"
    "  --url-file PATH  the backend is the first line of PATH (a password stays out of ps)\n"
    "\n"
    "exit status: 0; 64 usage error; 69 backend unreachable; 78 bad URL.\n";

/// Options common to the lock commands.
struct Common {
    std::string url;
    std::string url_file;  // --url-file: where `url` was read from
    std::string key;
};

/// Adds --url and --url-file, which the lock commands share, to `desc`.
void add_url_options(po::options_description& desc, Common& c) {
    desc.add_options()("url", po::value(&c.url))("url-file", po::value(&c.url_file));
}

/// The first line of the file at `path`, without the blanks around it.
std::string read_url_file(const std::string& path) {
    const auto problem = [&](const std::string& why) {
        return UsageError{"--url-file " + keylock::detail::shown(path) + ": " + why};
    };
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw problem(std::strerror(errno));
    std::string text;
    char buf[4096];
    // Up to the first newline (a pipe, e.g. `--url-file <(command)`, need not end).
    while (text.find('\n') == std::string::npos && text.size() < 64 * 1024) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int error = errno;
            ::close(fd);
            throw problem(std::strerror(error));
        }
        text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    text.erase(std::min(text.find('\n'), text.size()));
    const char* const blanks = " \t\r\v\f";
    text.erase(0, std::min(text.find_first_not_of(blanks), text.size()));
    text.erase(text.find_last_not_of(blanks) + 1);  // npos + 1 == 0: all blank
    if (text.empty()) throw problem("no URL in its first line");
    return text;
}

/// Settles the URL once the options are stored: --url, or --url-file's, else $KEYLOCK_URL (the
/// default already in c.url).
void settle_url(const po::variables_map& vm, Common& c) {
    if (vm.count("url-file") == 0) return;
    if (vm.count("url") != 0) throw UsageError{"--url and --url-file exclude each other"};
    c.url = read_url_file(c.url_file);
}

/// The exit status for a keylock error (see common.hpp); anything else is the backend's.
int status_of(const keylock::Error& e) { return keylock::tools::exit_status_of(e.code(), EX_UNAVAILABLE); }

bool is_local(const std::string& url) {
    try {
        return keylock::detail::url_scheme(url) == "local";
    } catch (const keylock::Error&) {
        return false;  // from_url reports the malformed URL
    }
}

/// Refuses local:// for the commands that coordinate separate processes.
void require_shared_backend(const std::string& url, const char* command) {
    if (!is_local(url)) return;
    throw UsageError{std::string(command) +
                     " needs a backend that processes share: local:// locks live inside one process, so "
                     "they cannot keep separate processes apart. Pass --url redis://HOST:PORT (or set "
                     "KEYLOCK_URL)"};
}

/// `url` with its `lease` option set to `lease` (a duration as the user wrote it), or nullopt
/// if Boost.URL cannot read it. The URLs of several hosts (redis+sentinel://, redis+cluster://,
/// redlock://) list them with commas, which no URL authority has: the authority is set aside
/// while the query is edited, as the Redis backend reads them (redis_config.cpp).
std::optional<std::string> with_lease(const std::string& url, const std::string& lease) {
    const std::string placeholder = "hosts.invalid";
    const std::size_t start = url.find("://");
    std::size_t authority = 0, end = 0;  // the authority's place in `url`: none without "//"
    std::string text = url;
    if (start != std::string::npos) {
        authority = start + 3;
        end = std::min(url.find_first_of("/?#", authority), url.size());
        text = url.substr(0, authority) + placeholder + url.substr(end);
    }
    auto parsed = boost::urls::parse_uri(text);
    if (!parsed) return std::nullopt;
    boost::urls::url u = *parsed;
    u.params().set("lease", lease);
    std::string edited(u.buffer());
    if (start == std::string::npos) return edited;
    if (edited.compare(0, authority, url, 0, authority) != 0 ||
        edited.compare(authority, placeholder.size(), placeholder) != 0) {
        return std::nullopt;  // Boost.URL rewrote the scheme or authority: not ours to guess
    }
    return url.substr(0, end) + edited.substr(authority + placeholder.size());
}

/// The registry of `url` with `--lease` (if given) as its lease. A lease the backend refuses
/// is reported as the flag, not as the URL option it became; faults of the URL itself stay the
/// URL's; a URL the lease cannot be set in is an error, not a lease ignored.
keylock::KeyedLockRegistry open_registry(const std::string& url, const std::string& lease) {
    if (lease.empty()) return keylock::KeyedLockRegistry::from_url(url);
    const std::optional<std::string> leased = with_lease(url, lease);
    if (!leased) {
        (void)keylock::KeyedLockRegistry::from_url(url);  // throws if the URL is at fault
        throw keylock::Error(errc::invalid_url, "keylock: --lease " + keylock::detail::shown(lease) +
                                                    ": cannot set the URL's lease option; put lease=" +
                                                    keylock::detail::shown(lease) + " in the URL instead");
    }
    try {
        return keylock::KeyedLockRegistry::from_url(*leased);
    } catch (const keylock::Error& e) {
        if (e.code() != keylock::errc::invalid_option) throw;
        (void)keylock::KeyedLockRegistry::from_url(url);  // throws if the URL is at fault
        // "… option 'lease' has value 'X'; expected …": keep what is expected.
        const std::string_view what = e.what();
        const auto expected = what.find("; expected ");
        throw keylock::Error(e.code(),
                             "keylock: --lease " + keylock::detail::shown(lease) + ": " +
                                 std::string(expected == std::string_view::npos ? what : what.substr(expected + 2)));
    }
}

std::chrono::milliseconds duration_of(const std::string& option, const std::string& text) {
    const auto d = keylock::detail::parse_duration(text);
    if (!d) {
        throw UsageError{option + " wants a duration such as 500ms, 30s or 2m, not '" + keylock::detail::shown(text) +
                         "'"};
    }
    return *d;
}

// ---- exec ----------------------------------------------------------------------------

struct ExecOptions {
    Common common;
    std::optional<std::chrono::milliseconds> timeout;  // nullopt: wait as long as it takes
    bool no_wait = false;
    std::string lease;
    bool pass_url = false;          // KEYLOCK_URL stays in CMD's environment
    bool shared = false;            // --shared
    std::uint32_t limit = 0;        // --limit N: N permits of KEY, a semaphore; 0: a lock
    std::uint32_t permits = 1;      // --permits n: how many of them
    std::vector<std::string> keys;  // --key, in the order given (common.key is the first)
    std::vector<std::string> command;
};

/// The value of `option` as a whole number from 1 to 2^32-1.
std::uint32_t count_of(const std::string& option, const std::string& text) {
    std::uint64_t n = 0;
    const char* const end = text.data() + text.size();
    const auto [stop, ec] = std::from_chars(text.data(), end, n);
    if (ec != std::errc{} || stop != end || n == 0 || n > std::numeric_limits<std::uint32_t>::max()) {
        throw UsageError{option + " wants a whole number from 1 up, not '" + keylock::detail::shown(text) + "'"};
    }
    return static_cast<std::uint32_t>(n);
}

/// Checks the mode options against each other and the keys, once all are read.
void settle_mode(const po::variables_map& vm, const std::string& limit, const std::string& permits, ExecOptions& o) {
    const bool has_limit = vm.count("limit") != 0;
    if (o.shared && has_limit) throw UsageError{"--shared and --limit exclude each other"};
    if (vm.count("permits") != 0 && !has_limit) {
        throw UsageError{"--permits needs --limit (how many permits KEY has)"};
    }
    if (has_limit) o.limit = count_of("--limit", limit);
    if (vm.count("permits") != 0) o.permits = count_of("--permits", permits);
    if (o.permits > o.limit && has_limit) {
        throw UsageError{std::string("--permits ").append(permits).append(" is more than --limit ").append(limit)};
    }
    if (o.keys.size() > 1 && (o.shared || has_limit)) {
        throw UsageError{std::string(o.shared ? "--shared" : "--limit") +
                         " takes one key: several keys (--key) are locked exclusively only"};
    }
    std::vector<std::string> sorted = o.keys;
    std::sort(sorted.begin(), sorted.end());
    if (auto same = std::adjacent_find(sorted.begin(), sorted.end()); same != sorted.end()) {
        throw UsageError{"--key '" + keylock::detail::shown(*same) + "' given twice"};
    }
}

/// A Program_options style parser, tried before its own, that ends option parsing at the first
/// operand or `--` (like getopt's `+`): that word and all after it are handed back unparsed,
/// as unnamed values. A lone last word is left to Program_options, which gives an operand back
/// the same way and drops a final `--`; it also calls this on a lone word to ask whether an
/// option's value looks like an option, and the answer must stay no.
std::vector<po::option> rest_unparsed(std::vector<std::string>& words) {
    const std::string& word = words.front();
    const bool is_option = word.size() > 1 && word[0] == '-' && word != "--";
    if (is_option || words.size() < 2) return {};
    std::vector<po::option> rest;
    for (std::string& w : words) {
        po::option unparsed(std::string(), {w});
        unparsed.original_tokens.push_back(std::move(w));
        rest.push_back(std::move(unparsed));
    }
    words.clear();
    return rest;
}

/// Parses the options at the front of `words`; the first operand or `--` and all after it are
/// left unparsed, for take_operands().
po::parsed_options parse_until_operand(const std::vector<std::string>& words, const po::options_description& desc) {
    return po::command_line_parser(words).options(desc).style(option_style).extra_style_parser(rest_unparsed).run();
}

ExecOptions parse_exec(int argc, char** argv) {
    ExecOptions o;
    o.common.url = default_url();
    std::string timeout, limit, permits;
    bool help = false;
    // --help prints usage_exec, the text docs/cli.md describes, so the options carry no text.
    po::options_description desc;
    add_url_options(desc, o.common);
    desc.add_options()("timeout", po::value(&timeout))("no-wait", po::bool_switch(&o.no_wait))(
        "lease", po::value(&o.lease))("pass-url", po::bool_switch(&o.pass_url))("help,h", po::bool_switch(&help))(
        "shared", po::bool_switch(&o.shared))("limit", po::value(&limit))("permits", po::value(&permits))(
        "key,k", po::value(&o.keys));

    // Options, KEY, more options, then CMD: after `--`, or from the first operand after KEY.
    // With --key before it, there is no KEY operand: CMD is the first operand (or follows --).
    po::parsed_options parsed = parse_until_operand({argv + 1, argv + argc}, desc);
    std::vector<std::string> rest = take_operands(parsed);
    const bool key_options = std::any_of(parsed.options.begin(), parsed.options.end(),
                                         [](const po::option& opt) { return opt.string_key == "key"; });
    const bool have_key = !key_options && !rest.empty() && rest.front() != "--";
    if (key_options && !rest.empty() && rest.front() == "--") rest.erase(rest.begin());
    if (have_key) {
        po::parsed_options after_key = parse_until_operand({rest.begin() + 1, rest.end()}, desc);
        o.common.key = std::move(rest.front());
        rest = take_operands(after_key);
        if (!rest.empty() && rest.front() == "--") rest.erase(rest.begin());
        parsed.options.insert(parsed.options.end(), after_key.options.begin(), after_key.options.end());
    }
    po::variables_map vm;
    po::store(parsed, vm);  // one store for both parts: an option given twice is an error
    po::notify(vm);
    if (help) throw HelpWanted{};
    if (have_key && !o.keys.empty()) {
        throw UsageError{"KEY and --key exclude each other: give every key with --key, or one KEY"};
    }
    if (!have_key && o.keys.empty()) {
        throw UsageError{rest.empty() ? "KEY is missing" : "KEY is missing before --"};
    }
    if (rest.empty()) throw UsageError{"CMD is missing (keylock exec KEY -- CMD [ARG...])"};
    o.command = std::move(rest);
    if (!o.keys.empty()) o.common.key = o.keys.front();
    settle_mode(vm, limit, permits, o);
    if (vm.count("timeout") != 0) o.timeout = duration_of("--timeout", timeout);
    if (vm.count("lease") != 0) (void)duration_of("--lease", o.lease);
    if (o.no_wait && o.timeout) throw UsageError{"--timeout and --no-wait exclude each other"};
    settle_url(vm, o.common);
    return o;
}

/// The signals keylock passes on to CMD; with SIGCHLD (CMD ended) and SIGUSR1 (the lease was
/// lost) they are what keylock waits for while CMD runs.
constexpr int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

sigset_t waited_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int s : forwarded) sigaddset(&set, s);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGUSR1);
    return set;
}

/// What `keylock exec` holds while CMD runs: one key's guard, or (--key, several) a MultiGuard.
struct Held {
    std::optional<keylock::Guard> one;
    std::optional<keylock::MultiGuard> all;

    bool holds() const noexcept { return one.has_value() || all.has_value(); }
    /// lost() also turns true when a lease ran out without a renewal, before the backend says so.
    bool lost() const noexcept { return one ? one->lost() : all && all->lost(); }
    std::uint64_t fencing_token(std::string_view key) const noexcept {
        return one ? one->fencing_token() : all ? all->fencing_token(key) : 0;
    }
    void release(std::error_code& ec) noexcept {
        if (one) one->release(ec);
        if (all) all->release(ec);
    }
};

/// What `o` asks to hold, for messages: "the lock on 'k'", "2 of the 5 permits of 'k'", ….
std::string what_is_held(const ExecOptions& o) {
    const auto quoted = [](const std::string& k) {
        return std::string("'").append(keylock::detail::shown(k)).append("'");
    };
    if (o.keys.size() > 1) {
        std::string keys("the locks on ");
        for (std::size_t i = 0; i < o.keys.size(); ++i) keys.append(i == 0 ? "" : ", ").append(quoted(o.keys[i]));
        return keys;
    }
    if (o.shared) return std::string("the shared lock on ").append(quoted(o.common.key));
    if (o.limit != 0) {
        return std::to_string(o.permits)
            .append(" of the ")
            .append(std::to_string(o.limit))
            .append(" permits of ")
            .append(quoted(o.common.key));
    }
    return std::string("the lock on ").append(quoted(o.common.key));
}

/// Takes what `o` asks for, without waiting (--no-wait), or waiting until `deadline` or `stop`.
Held acquire(keylock::KeyedLockRegistry& registry, const ExecOptions& o, std::chrono::steady_clock::time_point deadline,
             const std::stop_token& stop) {
    Held held;
    const std::string& key = o.common.key;
    if (o.keys.size() > 1) {
        held.all = o.no_wait ? registry.try_lock_all_for(o.keys, std::chrono::milliseconds(0))
                             : registry.try_lock_all_until(o.keys, deadline, stop);
    } else if (o.shared) {
        held.one = o.no_wait ? registry.try_lock_shared(key) : registry.try_lock_shared_until(key, deadline, stop);
    } else if (o.limit != 0) {
        held.one = o.no_wait ? registry.try_acquire_permits(key, o.permits, o.limit)
                             : registry.try_acquire_permits_until(key, o.permits, o.limit, deadline, stop);
    } else {
        held.one = o.no_wait ? registry.try_lock(key) : registry.try_lock_until(key, deadline, stop);
    }
    return held;
}

/// `KEY=VALUE` strings of the environment, with the fencing tokens set (KEYLOCK_FENCING_TOKEN,
/// and KEYLOCK_FENCING_TOKENS for --key) and KEYLOCK_URL (which may hold a password) removed
/// unless `pass_url`. A KEYLOCK_FENCING_TOKENS from outside never reaches CMD: it would not be
/// this lock's.
std::vector<std::string> child_environment(const ExecOptions& o, const Held& held) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        if (std::strncmp(*e, "KEYLOCK_FENCING_TOKEN=", 22) == 0) continue;
        if (std::strncmp(*e, "KEYLOCK_FENCING_TOKENS=", 23) == 0) continue;
        if (!o.pass_url && std::strncmp(*e, "KEYLOCK_URL=", 12) == 0) continue;
        env.emplace_back(*e);
    }
    env.push_back("KEYLOCK_FENCING_TOKEN=" + std::to_string(held.fencing_token(o.common.key)));
    if (!o.keys.empty()) {
        std::string tokens = "KEYLOCK_FENCING_TOKENS=";
        for (const std::string& k : o.keys) {
            if (&k != &o.keys.front()) tokens += ',';
            tokens += std::to_string(held.fencing_token(k));
        }
        env.push_back(std::move(tokens));
    }
    return env;
}

/// Starts CMD with default signal handling and an empty signal mask. Returns its pid, or sets
/// `error` (an errno value).
pid_t spawn(const ExecOptions& o, const Held& held, int& error) {
    std::vector<std::string> args = o.command;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env = child_environment(o, held);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);

    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, defaults = waited_signals();
    sigemptyset(&none);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    error = posix_spawnp(&pid, argv[0], nullptr, &attr, argv.data(), envp.data());
    posix_spawnattr_destroy(&attr);
    return error == 0 ? pid : -1;
}

/// Waits for CMD to end while passing on signals and watching the lease. Returns CMD's exit
/// status (128+N if signal N ended it); `lost` says whether the lease was lost meanwhile.
int supervise(pid_t child, const Held& held, bool& lost) {
    const sigset_t set = waited_signals();
    for (;;) {
        int status = 0;
        const pid_t done = ::waitpid(child, &status, WNOHANG);
        if (done == child) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (!lost && held.lost()) {
            lost = true;
            std::fprintf(stderr, "keylock exec: the lock was lost while the command ran; sending it SIGTERM\n");
            ::kill(child, SIGTERM);
        }
        // Woken by a signal, or every 100 ms to look at the lease (lost() also turns true when
        // the lease ran out without a renewal, before the backend says so).
        const timespec tick{0, 100'000'000};
        siginfo_t info{};
        const int sig = ::sigtimedwait(&set, &info, &tick);
        if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT) {
            // A terminal's ^C or ^\ already reached CMD (same process group): pass on only
            // what was sent to keylock itself.
            if (info.si_code != SI_KERNEL) ::kill(child, sig);
        }
    }
}

int run_exec(int argc, char** argv) {
    ExecOptions o = parse_exec(argc, argv);
    require_shared_backend(o.common.url, "keylock exec");

    // Block the signals we wait for before any thread exists (the registry starts one), so
    // that they stay pending for sigtimedwait instead of going to that thread.
    const sigset_t set = waited_signals();
    ::signal(SIGCHLD, SIG_DFL);  // an inherited SIG_IGN would reap CMD before we see it
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);

    auto registry = open_registry(o.common.url, o.lease);
    const pid_t self = ::getpid();
    registry.on_lost([self](std::string_view, std::uint64_t) { ::kill(self, SIGUSR1); });

    // While we wait for the lock, a signal ends the wait (and keylock, with 128+N).
    const auto deadline =
        o.timeout ? std::chrono::steady_clock::now() + *o.timeout : std::chrono::steady_clock::time_point::max();
    Held held;
    int interrupted = 0;
    {
        std::stop_source stop;
        std::jthread watcher([&](const std::stop_token& done) {
            const sigset_t interrupting = waited_signals();
            const timespec tick{0, 50'000'000};
            while (!done.stop_requested()) {
                const int sig = ::sigtimedwait(&interrupting, nullptr, &tick);
                if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT) {
                    interrupted = sig;
                    stop.request_stop();
                    return;
                }
            }
        });
        held = acquire(registry, o, deadline, stop.get_token());
        watcher.request_stop();
    }  // joins the watcher: `interrupted` is final
    if (interrupted != 0) {
        std::fprintf(stderr, "keylock exec: %s while waiting for the lock\n", ::strsignal(interrupted));
        return 128 + interrupted;
    }
    if (!held.holds()) {
        std::fprintf(stderr, "keylock exec: cannot have %s: held by someone else%s\n", what_is_held(o).c_str(),
                     o.no_wait ? "" : " (timed out)");
        return EX_TEMPFAIL;
    }

    int error = 0;
    const pid_t child = spawn(o, held, error);
    if (child < 0) {
        std::fprintf(stderr, "keylock exec: cannot run '%s': %s\n", o.command[0].c_str(), std::strerror(error));
        return error == ENOENT ? exit_not_found : exit_cannot_run;
    }
    bool lost = false;
    const int status = supervise(child, held, lost);
    if (held.lost()) lost = true;  // e.g. one key of several, whose release may not say so
    std::error_code ec;
    held.release(ec);
    if (ec == errc::not_owner) lost = true;
    if (lost) {
        std::fprintf(stderr, "keylock exec: %s: lost while the command ran\n", what_is_held(o).c_str());
        return EX_TEMPFAIL;
    }
    if (ec) std::fprintf(stderr, "keylock exec: release: %s (the lease will free the lock)\n", ec.message().c_str());
    return status;
}

// ---- status and release --------------------------------------------------------------------

Common parse_key_command(int argc, char** argv, bool* force) {
    Common c{default_url(), {}, {}};
    bool help = false;
    po::options_description desc;  // --help prints the command's usage text: no text here
    add_url_options(desc, c);
    desc.add_options()("help,h", po::bool_switch(&help));
    if (force != nullptr) desc.add_options()("force", po::bool_switch(force));
    po::parsed_options parsed = po::command_line_parser(argc, argv).options(desc).style(option_style).run();
    const std::vector<std::string> keys = take_operands(parsed);
    po::variables_map vm;
    po::store(parsed, vm);
    po::notify(vm);
    if (help) throw HelpWanted{};
    if (keys.empty()) throw UsageError{"KEY is missing"};
    if (keys.size() > 1) throw UsageError{"one KEY only (got '" + keylock::detail::shown(keys[1]) + "' too)"};
    c.key = keys.front();
    settle_url(vm, c);
    return c;
}

int run_status(int argc, char** argv) {
    const Common c = parse_key_command(argc, argv, nullptr);
    require_shared_backend(c.url, "keylock status");
    auto registry = keylock::KeyedLockRegistry::from_url(c.url);
    const keylock::LockInfo info = registry.inspect(c.key);
    if (!info.held) {
        std::printf("free\n");
    } else {
        // The first two fields as they always were (scripts read them); then how it is held.
        std::string how = info.mode == keylock::LockMode::shared    ? "shared"
                          : info.mode == keylock::LockMode::upgrade ? "upgrade"
                          : info.mode == keylock::LockMode::permits ? "permits"
                                                                    : "exclusive";
        how.append(" holders=").append(std::to_string(info.holders));
        if (info.mode == keylock::LockMode::shared) how.append(info.upgrader ? " upgrader=yes" : " upgrader=no");
        if (info.mode == keylock::LockMode::permits) {
            how.append(" permits=")
                .append(std::to_string(info.permits))
                .append(" limit=")
                .append(std::to_string(info.limit));
        }
        std::printf("held token=%llu ttl_ms=%lld mode=%s\n", static_cast<unsigned long long>(info.fencing_token),
                    static_cast<long long>(info.ttl.count()), how.c_str());
    }
    return 0;
}

int run_release(int argc, char** argv) {
    bool force = false;
    const Common c = parse_key_command(argc, argv, &force);
    if (!force) {
        throw UsageError{"release deletes the lock whoever holds it: say --force to mean it"};
    }
    require_shared_backend(c.url, "keylock release");
    auto registry = keylock::KeyedLockRegistry::from_url(c.url);
    std::printf("%s\n", registry.force_release(c.key) ? "released" : "free");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fputs(usage_main, stderr);
        return EX_USAGE;
    }
    const std::string command = argv[1];
    if (command == "--help" || command == "-h" || command == "help") {
        std::fputs(usage_main, stdout);
        return 0;
    }
    if (command == "--version" || command == "version") {
        // The library's version: a shared libkeylock may be newer than the headers built in.
        std::printf("keylock %s\n", keylock::version().string);
        return 0;
    }
    if (command == "demo") {
        std::string name = "keylock demo";
        argv[1] = name.data();
        return keylock::cli::demo_main(argc - 1, argv + 1);
    }
    struct Command {
        const char* name;
        const char* synopsis;  // for usage errors: what follows `keylock NAME`
        const char* usage;     // for --help
        int (*run)(int, char**);
    };
    static const Command commands[] = {
        {"exec", "[OPTIONS] KEY | --key KEY... -- CMD [ARG...]", usage_exec, run_exec},
        {"status", "[--url URL | --url-file PATH] KEY", usage_status, run_status},
        {"release", "--force [--url URL | --url-file PATH] KEY", usage_release, run_release},
    };
    for (const Command& c : commands) {
        if (command != c.name) continue;
        const std::string program = "keylock " + command;
        try {
            return c.run(argc - 1, argv + 1);
        } catch (const HelpWanted&) {
            std::fputs(c.usage, stdout);
            return 0;
        } catch (const UsageError& e) {
            return usage_error(program.c_str(), c.synopsis, e.message);
        } catch (const po::error& e) {
            return usage_error(program.c_str(), c.synopsis, e.what());
        } catch (const keylock::Error& e) {
            keylock::tools::print_error(program.c_str(), e.what());
            return status_of(e);
        } catch (const std::exception& e) {
            keylock::tools::print_error(program.c_str(), e.what());
            return EXIT_FAILURE;
        }
    }
    return usage_error("keylock", "COMMAND [OPTIONS]", "unknown command '" + keylock::detail::shown(command) + "'");
}
