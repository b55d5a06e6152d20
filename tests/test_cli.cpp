// SPDX-License-Identifier: BSL-1.0
// The keylock command against a real redis-server: exec keeps processes apart, passes on
// signals, reacts to a lost lease; status and release for operators; exit statuses.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <keylock/keylock.hpp>

#include "cli_run.hpp"
#include "eventually.hpp"
#include "redis_server.hpp"
#include "topology.hpp"

using keylock::Guard;
using keylock::KeyedLockRegistry;
using keylock::test::Cli;
using keylock::test::RedisServer;
using keylock::test::RedlockDeployment;
using keylock::test::run_cli;
using keylock::test::url;
using keylock::test::eventually;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// A fresh directory for a test's files, removed at the end.
struct TempDir {
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "keylock-cli-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        path = pattern;
    }
    TempDir(const TempDir&) = delete;  // two copies would remove the directory twice
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    std::string operator/(const std::string& name) const { return path + "/" + name; }
    std::string path;
};

std::vector<std::string> lines_of(const std::string& file) {
    std::ifstream in(file);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

/// A command that waits until told to stop: it touches `started`, and on SIGTERM writes
/// `got-term` and exits 3.
std::vector<std::string> patient_command(const TempDir& dir) {
    return {"sh", "-c",
            R"(trap 'echo term > "$0/got-term"; exit 3' TERM; touch "$0/started"; while :; do sleep 0.05; done)",
            dir.path};
}

bool exists(const std::string& path) { return std::filesystem::exists(path); }

}  // namespace

TEST_CASE("keylock exec keeps 8 concurrent processes from overlapping on one key", "[cli][redis]") {
    RedisServer server;
    TempDir dir;
    // The critical section: mkdir fails if another process is inside; the fencing tokens are
    // appended in the order the processes got in.
    const std::string section = "mkdir \"$0/inside\" 2>/dev/null || echo overlap >> \"$0/overlaps\"; "
                                "echo \"$KEYLOCK_FENCING_TOKEN\" >> \"$0/tokens\"; sleep 0.05; rmdir \"$0/inside\"";
    std::atomic<int> failures{0};
    std::vector<std::thread> processes;
    for (int p = 0; p < 8; ++p) {
        processes.emplace_back([&] {
            for (int round = 0; round < 3; ++round) {
                auto [status, out] =
                    run_cli({"exec", "--url", url(server), "shared", "--", "sh", "-c", section, dir.path});
                if (status != 0) failures.fetch_add(1);
            }
        });
    }
    for (auto& t : processes) t.join();
    CHECK(failures.load() == 0);
    CHECK_FALSE(exists(dir / "overlaps"));
    const auto tokens = lines_of(dir / "tokens");
    REQUIRE(tokens.size() == 24);
    for (std::size_t i = 1; i < tokens.size(); ++i) CHECK(std::stoull(tokens[i]) > std::stoull(tokens[i - 1]));
    CHECK(run_cli({"status", "--url", url(server), "shared"}).second == "free\n");
}

TEST_CASE("keylock exec exit statuses", "[cli][redis]") {
    RedisServer server;
    SECTION("the command's own, 128+N for a signal, 127 for a missing command") {
        CHECK(run_cli({"exec", "--url", url(server), "k", "--", "sh", "-c", "exit 7"}).first == 7);
        CHECK(run_cli({"exec", "--url", url(server), "k", "--", "sh", "-c", "kill -KILL $$"}).first == 128 + SIGKILL);
        auto [status, out] = run_cli({"exec", "--url", url(server), "k", "--", "no-such-command-here"});
        CHECK(status == 127);
        CHECK_THAT(out, Catch::Contains("cannot run 'no-such-command-here'"));
        CHECK(run_cli({"status", "--url", url(server), "k"}).second == "free\n");  // released every time
    }
    SECTION("75 when the lock is not ours in time") {
        auto r = KeyedLockRegistry::from_url(url(server));
        Guard held = r.lock("busy");
        auto start = Clock::now();
        auto [status, out] = run_cli({"exec", "--url", url(server), "--no-wait", "busy", "--", "true"});
        CHECK(status == 75);
        CHECK_THAT(out, Catch::Contains("held by someone else"));
        start = Clock::now();
        CHECK(run_cli({"exec", "--url", url(server), "--timeout", "300ms", "busy", "--", "true"}).first == 75);
        CHECK(Clock::now() - start >= 300ms);
    }
    SECTION("64 for usage errors, 78 for a bad URL, 69 for an unreachable backend") {
        CHECK(run_cli({"exec", "--url", url(server)}).first == 64);       // no KEY
        CHECK(run_cli({"exec", "--url", url(server), "k"}).first == 64);  // no CMD
        CHECK(run_cli({"exec", "--no-wait", "--timeout", "1s", "--url", url(server), "k", "--", "true"}).first == 64);
        CHECK(run_cli({"exec", "--timeout", "soon", "--url", url(server), "k", "--", "true"}).first == 64);
        CHECK(run_cli({"exec", "--bogus", "k", "--", "true"}).first == 64);
        CHECK(run_cli({"frobnicate"}).first == 64);
        CHECK(run_cli({}).first == 64);
        auto [local_status, local_out] = run_cli({"exec", "k", "--", "true"});  // default local://
        CHECK(local_status == 64);
        CHECK_THAT(local_out, Catch::Contains("local:// locks live inside one process"));
        CHECK(run_cli({"exec", "--url", "nosuch://x", "k", "--", "true"}).first == 78);
        CHECK(run_cli({"exec", "--url", url(server, "lease=forever"), "k", "--", "true"}).first == 78);
        CHECK(run_cli({"exec", "--url", url(server), "--lease", "1ms", "k", "--", "true"}).first == 78);  // below 1s
        auto [down, down_out] =
            run_cli({"exec", "--url", "redis://:s3cret-pw@127.0.0.1:1/?connect_timeout=200ms", "k", "--", "true"});
        CHECK(down == 69);
        CHECK_THAT(down_out, !Catch::Contains("s3cret-pw"));
    }
    SECTION("--help for each command") {
        for (const char* command : {"exec", "status", "release", "demo"}) {
            auto [status, out] = run_cli({command, "--help"});
            CHECK(status == 0);
            CHECK_THAT(out, Catch::StartsWith("usage: keylock " + std::string(command)));
        }
        CHECK(run_cli({"--help"}).first == 0);
        // After `--`, --help is the command's.
        CHECK(run_cli({"exec", "--url", url(server), "k", "--", "sh", "-c", "exit 5", "--help"}).first == 5);
    }
}

TEST_CASE("keylock exec gives the command its fencing token and the lock while it runs", "[cli][redis]") {
    RedisServer server;
    TempDir dir;
    const std::string inner = std::string(KEYLOCK_CLI_PATH) + " status --url " + url(server) + " k";
    auto [status, out] =
        run_cli({"exec", "--url", url(server), "--lease", "5s", "k", "--", "sh", "-c",
                 R"(echo "$KEYLOCK_FENCING_TOKEN" > "$0/token"; )" + inner + R"( > "$0/status")", dir.path});
    REQUIRE(status == 0);
    const auto token = lines_of(dir / "token");
    const auto seen = lines_of(dir / "status");
    REQUIRE(token.size() == 1);
    REQUIRE(seen.size() == 1);
    CHECK_THAT(seen[0], Catch::StartsWith("held token=" + token[0] + " ttl_ms="));
    const long ttl = std::stol(seen[0].substr(seen[0].find("ttl_ms=") + 7));
    CHECK(ttl > 3000);  // --lease 5s
    CHECK(ttl <= 5000);
}

TEST_CASE("keylock exec --lease applies to URLs of several hosts too", "[cli][redis]") {
    // redlock://H1:P1,H2:P2,H3:P3: commas in the authority, which URL parsers do not read as
    // hosts (Boost.URL takes "127.0.0.1:P1,…" for one host and a port, and refuses
    // "[::1]:P1,[::1]:P2"). The lease the command sees must be --lease's, not the URL's (60 s)
    // nor the default (30 s).
    RedlockDeployment nodes(3, {"--bind", "127.0.0.1", "::1"});
    std::string v6 = "redlock://";
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        if (i > 0) v6 += ',';
        v6 += "[::1]:" + std::to_string(nodes.server(i).port());
    }
    for (const std::string& u : {nodes.url(), nodes.url("lease=60s&connect_timeout=2s"), v6, v6 + "?lease=60s"}) {
        INFO(u);
        const std::string status = std::string(KEYLOCK_CLI_PATH) + " status --url '" + u + "' k";
        auto [code, out] = run_cli({"exec", "--url", u, "--lease", "7s", "k", "--", "sh", "-c", status});
        INFO(out);
        REQUIRE(code == 0);
        REQUIRE_THAT(out, Catch::StartsWith("held token="));
        const long ttl = std::stol(out.substr(out.find("ttl_ms=") + 7));
        CHECK(ttl <= 7000);
        CHECK(ttl > 5000);
    }
}

TEST_CASE("keylock exec renews the lease while the command runs longer than it", "[cli][redis]") {
    RedisServer server;
    TempDir dir;
    // 3 s under a 1 s lease: the lock must stay ours throughout (checked from outside halfway).
    Cli cli({"exec", "--url", url(server), "--lease", "1s", "k", "--", "sh", "-c", "touch \"$0/started\"; sleep 3",
             dir.path});
    REQUIRE(eventually([&] { return exists(dir / "started"); }));
    std::this_thread::sleep_for(1500ms);
    CHECK_THAT(run_cli({"status", "--url", url(server), "k"}).second, Catch::StartsWith("held token="));
    CHECK(cli.wait() == 0);  // not 75: never lost
    CHECK(run_cli({"status", "--url", url(server), "k"}).second == "free\n");
}

TEST_CASE("keylock exec: a lost lease stops the command with SIGTERM and exits 75", "[cli][redis]") {
    RedisServer server;
    TempDir dir;
    std::vector<std::string> args{"exec", "--url", url(server), "--lease", "1s", "k", "--"};
    for (auto& a : patient_command(dir)) args.push_back(a);
    Cli cli(args);
    REQUIRE(eventually([&] { return exists(dir / "started"); }));
    server.command("SET keylock:k someone-else");  // taken from us
    const auto start = Clock::now();
    CHECK(cli.wait() == 75);
    CHECK(Clock::now() - start < 5s);  // the watchdog renews every lease/3
    CHECK(exists(dir / "got-term"));
    CHECK_THAT(cli.output(), Catch::Contains("lost"));
    CHECK(server.command("EXISTS keylock:k") == ":1");  // the new owner's lock stays
}

TEST_CASE("keylock exec passes signals on and releases the lock when the command ends", "[cli][redis]") {
    RedisServer server;
    TempDir dir;
    std::vector<std::string> args{"exec", "--url", url(server), "k", "--"};
    for (auto& a : patient_command(dir)) args.push_back(a);
    Cli cli(args);
    REQUIRE(eventually([&] { return exists(dir / "started"); }));
    CHECK_THAT(run_cli({"status", "--url", url(server), "k"}).second, Catch::StartsWith("held token="));
    cli.signal(SIGTERM);
    CHECK(cli.wait() == 3);  // the command's own status: its trap ran
    CHECK(exists(dir / "got-term"));
    CHECK(run_cli({"status", "--url", url(server), "k"}).second == "free\n");
}

TEST_CASE("keylock exec: a signal while waiting for the lock ends the wait", "[cli][redis]") {
    RedisServer server;
    auto r = KeyedLockRegistry::from_url(url(server));
    Guard held = r.lock("k");
    Cli waiting({"exec", "--url", url(server), "k", "--", "true"});
    std::this_thread::sleep_for(300ms);
    const auto start = Clock::now();
    waiting.signal(SIGINT);
    CHECK(waiting.wait() == 128 + SIGINT);
    CHECK(Clock::now() - start < 2s);
    CHECK_THAT(waiting.output(), Catch::Contains("while waiting for the lock"));
}

TEST_CASE("keylock status and release --force for operators", "[cli][redis]") {
    RedisServer server;
    CHECK(run_cli({"status", "--url", url(server), "k"}) == std::pair<int, std::string>{0, "free\n"});
    auto r = KeyedLockRegistry::from_url(url(server));
    Guard g = r.lock("k");
    auto [status, out] = run_cli({"status", "--url", url(server), "k"});
    CHECK(status == 0);
    CHECK_THAT(out, Catch::StartsWith("held token=" + std::to_string(g.fencing_token()) + " ttl_ms="));
    CHECK_THAT(out, Catch::EndsWith(" mode=exclusive holders=1\n"));
    {
        // How a key is held, by mode: readers (with the upgrade holder), and permits.
        Guard u = r.lock_upgrade("s");
        Guard s1 = r.lock_shared("s");
        Guard s2 = r.lock_shared("s");
        CHECK_THAT(run_cli({"status", "--url", url(server), "s"}).second,
                   Catch::EndsWith(" mode=shared holders=3 upgrader=yes\n"));
        Guard p1 = r.acquire_permits("p", 1, 8);
        Guard p2 = r.acquire_permits("p", 2, 8);
        const std::string permits = run_cli({"status", "--url", url(server), "p"}).second;
        CHECK_THAT(permits, Catch::StartsWith("held token=" + std::to_string(p2.fencing_token()) + " ttl_ms="));
        CHECK_THAT(permits, Catch::EndsWith(" mode=permits holders=2 permits=3 limit=8\n"));
    }
    // KEYLOCK_URL is the default URL.
    CHECK_THAT(run_cli({"status", "k"}, {"KEYLOCK_URL=" + url(server)}).second, Catch::StartsWith("held token="));

    auto [refused, refused_out] = run_cli({"release", "--url", url(server), "k"});
    CHECK(refused == 64);
    CHECK_THAT(refused_out, Catch::Contains("--force"));
    CHECK(run_cli({"status", "--url", url(server), "k"}).second != "free\n");
    CHECK(run_cli({"release", "--force", "--url", url(server), "k"}) == std::pair<int, std::string>{0, "released\n"});
    CHECK(run_cli({"status", "--url", url(server), "k"}).second == "free\n");
    CHECK(run_cli({"release", "--force", "--url", url(server), "k"}) == std::pair<int, std::string>{0, "free\n"});
    CHECK(run_cli({"status", "k"}).first == 64);  // local:// cannot see other processes' locks
    CHECK(run_cli({"status", "--url", url(server), "a", "b"}).first == 64);
}

TEST_CASE("keylock exec reads options before and after KEY, up to -- or CMD", "[cli][redis]") {
    RedisServer server;
    SECTION("an option after KEY is keylock's, not the command") {
        CHECK(run_cli({"exec", "--url", url(server), "nightly", "--timeout", "5s", "--", "echo", "hi"}) ==
              std::pair<int, std::string>{0, "hi\n"});
        // And it takes effect: the command sees a 5 s lease, not the default 30 s.
        const std::string status = std::string(KEYLOCK_CLI_PATH) + " status --url " + url(server) + " k";
        auto [code, out] = run_cli({"exec", "k", "--lease", "5s", "--url=" + url(server), "--", "sh", "-c", status});
        REQUIRE(code == 0);
        REQUIRE_THAT(out, Catch::StartsWith("held token="));
        CHECK(std::stol(out.substr(out.find("ttl_ms=") + 7)) <= 5000);
    }
    SECTION("after --, every word is the command's, even those that look like options") {
        CHECK(run_cli({"exec", "--url", url(server), "k", "--", "printf", "%s|", "--url", "x", "--timeout", "--help",
                       "--", "-h"}) == std::pair<int, std::string>{0, "--url|x|--timeout|--help|--|-h|"});
    }
    SECTION("without --, the command begins at the first word after KEY that is not an option") {
        CHECK(run_cli({"exec", "--url", url(server), "k", "--no-wait", "printf", "%s|", "-x", "--no-wait", "--"}) ==
              std::pair<int, std::string>{0, "-x|--no-wait|--|"});
    }
}

TEST_CASE("keylock usage errors: one line naming the problem, a pointer to --help, exit 64", "[cli][redis]") {
    RedisServer server;
    const std::string u = url(server);
    const auto check = [](const std::vector<std::string>& args, const std::string& command,
                          const std::string& problem) {
        auto [status, out] = run_cli(args);
        INFO(out);
        CHECK(status == 64);
        REQUIRE(std::count(out.begin(), out.end(), '\n') == 2);
        const std::string first = out.substr(0, out.find('\n'));
        const std::string second = out.substr(first.size() + 1);
        CHECK_THAT(first, Catch::StartsWith(command + ": ") && Catch::Contains(problem));
        CHECK_THAT(second, Catch::StartsWith("usage: " + command + " ") && Catch::Contains("`" + command + " --help`"));
    };
    check({"exec", "--url", u, "k", "--bogus", "--", "true"}, "keylock exec", "'--bogus'");
    check({"exec", "--url", u, "k", "--timeout"}, "keylock exec", "--timeout");
    check({"exec", "--url", u, "k", "--timeout", "1s", "--no-wait", "--", "true"}, "keylock exec",
          "exclude each other");
    check({"exec", "--url", u, "--", "true"}, "keylock exec", "KEY is missing");
    check({"exec", "--url", u, "k", "--"}, "keylock exec", "CMD is missing");
    check({"exec", "--url", u, "--url", u, "k", "--", "true"}, "keylock exec", "--url");
    // The lock modes: combinations that mean nothing, and repeated keys.
    check({"exec", "--url", u, "--shared", "--limit", "2", "k", "--", "true"}, "keylock exec",
          "--shared and --limit exclude each other");
    check({"exec", "--url", u, "k", "--permits", "2", "--", "true"}, "keylock exec", "--permits needs --limit");
    check({"exec", "--url", u, "--limit", "2", "--permits", "3", "k", "--", "true"}, "keylock exec",
          "--permits 3 is more than --limit 2");
    check({"exec", "--url", u, "--limit", "0", "k", "--", "true"}, "keylock exec", "--limit wants a whole number");
    check({"exec", "--url", u, "-k", "a", "--key", "b", "-k", "a", "--", "true"}, "keylock exec",
          "--key 'a' given twice");
    check({"exec", "--url", u, "-k", "a", "-k", "b", "--shared", "--", "true"}, "keylock exec",
          "--shared takes one key");
    check({"exec", "--url", u, "-k", "a", "-k", "b", "--limit", "2", "--", "true"}, "keylock exec",
          "--limit takes one key");
    check({"exec", "--url", u, "k", "--key", "b", "--", "true"}, "keylock exec", "KEY and --key exclude each other");
    check({"status", "--url", u, "a", "b"}, "keylock status", "one KEY only");
    check({"release", "k", "--url", u}, "keylock release", "--force");
    check({"frobnicate"}, "keylock", "unknown command 'frobnicate'");
    check({"demo", "--threads", "0"}, "keylock demo", "--threads wants a whole number");
    check({"demo", "extra"}, "keylock demo", "'extra'");
    // A key that begins with '-' comes after --.
    CHECK(run_cli({"status", "--url", u, "--", "-k"}) == std::pair<int, std::string>{0, "free\n"});
}

TEST_CASE("keylock --version prints the version of project() in CMakeLists.txt", "[cli]") {
    const std::string expected = std::string("keylock ") + KEYLOCK_VERSION_STRING + "\n";
    CHECK(run_cli({"--version"}) == std::pair<int, std::string>{0, expected});
    CHECK(run_cli({"version"}) == std::pair<int, std::string>{0, expected});
    // The library linked in is the one these headers describe.
    CHECK(std::string(keylock::version().string) == KEYLOCK_VERSION_STRING);
    CHECK(keylock::version().major == KEYLOCK_VERSION_MAJOR);
    CHECK(KEYLOCK_VERSION == KEYLOCK_VERSION_MAJOR * 10000 + KEYLOCK_VERSION_MINOR * 100 + KEYLOCK_VERSION_PATCH);
}

TEST_CASE("keylock errors: one prefix, the cause kept, a bad --lease named as the flag", "[cli][redis]") {
    // Nobody listens on port 1: every command fails with unavailable (69) and says why.
    const std::string dead = "redis://127.0.0.1:1?connect_timeout=200ms";
    for (const auto& [args, command, what] :
         std::vector<std::tuple<std::vector<std::string>, std::string, std::string>>{
             {{"exec", "--url", dead, "k", "--", "true"}, "keylock exec", "lock 'k'"},
             {{"status", "--url", dead, "k"}, "keylock status", "inspect 'k'"},
             {{"release", "--force", "--url", dead, "k"}, "keylock release", "force_release 'k'"},
         }) {
        auto [status, out] = run_cli(args);
        INFO(out);
        CHECK(status == 69);
        std::string expected = command;  // no "keylock exec: keylock: "
        expected += ": ";
        expected += what;
        CHECK_THAT(out, Catch::StartsWith(expected));
        CHECK_THAT(out, Catch::Contains("cannot connect to Redis at 127.0.0.1:1"));
    }
    auto [status, out] = run_cli({"exec", "--url", dead, "--lease", "1ms", "k", "--", "true"});
    INFO(out);
    CHECK(status == 78);
    CHECK_THAT(out, Catch::StartsWith("keylock exec: --lease 1ms: expected a duration from 1s to 24h"));
    // A fault of the URL itself stays the URL's.
    auto [status2, out2] = run_cli({"exec", "--url", dead + "&bogus=1", "--lease", "1ms", "k", "--", "true"});
    CHECK(status2 == 78);
    CHECK_THAT(out2, Catch::Contains("unknown option 'bogus'"));
}

namespace {

/// A command for the mode tests: it marks itself inside (`in-NAME`), waits up to 5 s until the
/// file `OTHER` of the directory exists (another holder it should meet), writes `met-NAME` if
/// it did, stays `STAY` seconds more, and leaves (removes `in-NAME`).
std::vector<std::string> meeting_command(const TempDir& dir, const std::string& name, const std::string& other,
                                         const std::string& stay) {
    std::string script = R"(touch "$0/in-$1"; i=0; while [ ! -e "$0/$2" ] && [ $i -lt 100 ]; do sleep 0.05; )";
    script += R"(i=$((i+1)); done; [ -e "$0/$2" ] && touch "$0/met-$1"; sleep "$3"; rm "$0/in-$1")";
    return {"sh", "-c", script, dir.path, name, other, stay};
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

}  // namespace

TEST_CASE("keylock exec --shared: shared holders run at once, a plain exec waits for all of them",
          "[cli][redis][modes]") {
    RedisServer server;
    TempDir dir;
    const std::vector<std::string> exec{"exec", "--url", url(server), "--shared", "k", "--"};
    // Each waits until it sees the other inside: only two holders at once both get there.
    Cli a(concat(exec, meeting_command(dir, "a", "in-b", "1")));
    Cli b(concat(exec, meeting_command(dir, "b", "in-a", "1")));
    REQUIRE(eventually([&] { return exists(dir / "met-a") && exists(dir / "met-b"); }, 10s));
    // A plain exec of the key now waits until both have left.
    Cli plain({"exec", "--url", url(server), "k", "--", "sh", "-c",
               R"(for f in "$0"/in-*; do [ -e "$f" ] && echo "$f" >> "$0/overlaps"; done; touch "$0/plain-ran")",
               dir.path});
    std::this_thread::sleep_for(300ms);
    CHECK_FALSE(exists(dir / "plain-ran"));
    CHECK(a.wait() == 0);
    CHECK(b.wait() == 0);
    CHECK(plain.wait() == 0);
    CHECK(exists(dir / "plain-ran"));
    CHECK_FALSE(exists(dir / "overlaps"));
    // And a shared exec does not get in beside a plain holder.
    auto r = KeyedLockRegistry::from_url(url(server));
    Guard held = r.lock("k");
    const auto start = Clock::now();
    auto [status, out] = run_cli({"exec", "--url", url(server), "--shared", "--timeout", "300ms", "k", "--", "true"});
    CHECK(status == 75);
    CHECK(Clock::now() - start >= 300ms);
    CHECK_THAT(out, Catch::Contains("shared lock on 'k'") && Catch::Contains("held by someone else"));
}

TEST_CASE("keylock exec --limit 2: three at once, never more than two inside", "[cli][redis][modes]") {
    RedisServer server;
    TempDir dir;
    // Each counts the holders inside (its own mark included) when it enters, and stays 0.5 s.
    const std::string section =
        R"(touch "$0/in-$1"; ls "$0" | grep -c '^in-' >> "$0/counts"; sleep 0.5; rm "$0/in-$1")";
    std::vector<std::unique_ptr<Cli>> holders;
    for (const char* name : {"a", "b", "c"}) {
        holders.push_back(std::make_unique<Cli>(std::vector<std::string>{
            "exec", "--url", url(server), "--limit", "2", "slots", "--", "sh", "-c", section, dir.path, name}));
    }
    for (auto& h : holders) CHECK(h->wait() == 0);
    const auto counts = lines_of(dir / "counts");
    REQUIRE(counts.size() == 3);
    int most = 0;
    for (const auto& c : counts) most = std::max(most, std::stoi(c));
    CHECK(most == 2);  // two at once, never three
    CHECK(run_cli({"status", "--url", url(server), "slots"}).second == "free\n");

    // --permits 2 of the 2 while one is taken: not now (75); and a key used another way: 78.
    auto r = KeyedLockRegistry::from_url(url(server));
    Guard one = r.acquire_permits("slots", 1, 2);
    auto [status, out] =
        run_cli({"exec", "--url", url(server), "--no-wait", "--limit", "2", "--permits", "2", "slots", "--", "true"});
    CHECK(status == 75);
    CHECK_THAT(out, Catch::Contains("2 of the 2 permits of 'slots'"));
    CHECK(run_cli({"exec", "--url", url(server), "--no-wait", "--limit", "2", "slots", "--", "true"}).first == 0);
    CHECK(run_cli({"exec", "--url", url(server), "--limit", "3", "slots", "--", "true"}).first == 78);
    CHECK(run_cli({"exec", "--url", url(server), "slots", "--", "true"}).first == 78);
}

TEST_CASE("keylock exec --key a --key b holds both or neither, with a token for each", "[cli][redis][modes]") {
    RedisServer server;
    TempDir dir;
    Cli both({"exec", "--url", url(server), "-k", "b", "--key", "a", "--", "sh", "-c",
              R"(echo "$KEYLOCK_FENCING_TOKEN $KEYLOCK_FENCING_TOKENS" > "$0/tokens"; touch "$0/started"; sleep 1)",
              dir.path});
    REQUIRE(eventually([&] { return exists(dir / "started"); }));
    auto [status, out] = run_cli({"exec", "--url", url(server), "--no-wait", "b", "--", "true"});
    CHECK(status == 75);
    CHECK(run_cli({"exec", "--url", url(server), "--no-wait", "a", "--", "true"}).first == 75);
    const std::string status_a = run_cli({"status", "--url", url(server), "a"}).second;
    const std::string status_b = run_cli({"status", "--url", url(server), "b"}).second;
    CHECK(both.wait() == 0);
    // KEYLOCK_FENCING_TOKENS: the tokens in --key order (b, a); KEYLOCK_FENCING_TOKEN: b's.
    const auto tokens = lines_of(dir / "tokens");
    REQUIRE(tokens.size() == 1);
    const std::string first = tokens[0].substr(0, tokens[0].find(' '));
    const std::string list = tokens[0].substr(first.size() + 1);
    const std::string token_b = list.substr(0, list.find(','));
    const std::string token_a = list.substr(list.find(',') + 1);
    CHECK(first == token_b);
    CHECK_THAT(status_b, Catch::StartsWith("held token=" + token_b + " "));
    CHECK_THAT(status_a, Catch::StartsWith("held token=" + token_a + " "));
    CHECK(run_cli({"status", "--url", url(server), "a"}).second == "free\n");
    CHECK(run_cli({"status", "--url", url(server), "b"}).second == "free\n");

    // All or nothing: with b taken, neither is held, and a is left free.
    auto r = KeyedLockRegistry::from_url(url(server));
    Guard held = r.lock("b");
    auto [none, none_out] =
        run_cli({"exec", "--url", url(server), "--timeout", "300ms", "-k", "a", "-k", "b", "--", "true"});
    CHECK(none == 75);
    CHECK_THAT(none_out, Catch::Contains("the locks on 'a', 'b'"));
    CHECK(run_cli({"status", "--url", url(server), "a"}).second == "free\n");
    // A KEYLOCK_FENCING_TOKENS from outside is not passed on without --key.
    CHECK(run_cli({"exec", "--url", url(server), "c", "--", "sh", "-c", "echo \"[$KEYLOCK_FENCING_TOKENS]\""},
                  {"KEYLOCK_FENCING_TOKENS=1,2"}) == std::pair<int, std::string>{0, "[]\n"});
}

TEST_CASE("keylock exec: a lost shared, permit or multi-key hold stops the command and exits 75",
          "[cli][redis][modes]") {
    RedisServer server;
    for (const auto& [mode, deleted] : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"--shared", "k"}, "keylock:k"},
             {{"--limit", "3", "--permits", "2", "k"}, "keylock:k"},
             {{"-k", "a", "-k", "b"}, "keylock:b"},
         }) {
        TempDir dir;
        INFO(mode.front());
        std::vector<std::string> args = concat({"exec", "--url", url(server), "--lease", "1s"}, mode);
        args.emplace_back("--");
        Cli cli(concat(args, patient_command(dir)));
        REQUIRE(eventually([&] { return exists(dir / "started"); }));
        server.command("DEL " + deleted);  // an operator deletes the key: the hold is gone
        const auto start = Clock::now();
        CHECK(cli.wait() == 75);
        CHECK(Clock::now() - start < 5s);
        CHECK(exists(dir / "got-term"));
        CHECK_THAT(cli.output(), Catch::Contains("lost while the command ran"));
    }
}

TEST_CASE("keylock exec reads the mode options before and after KEY, up to -- or CMD", "[cli][redis][modes]") {
    RedisServer server;
    const std::string u = url(server);
    auto r = KeyedLockRegistry::from_url(u);
    // Held shared and as 1 of 2 permits: a plain exec would get 75 or 78, these get in.
    Guard reader = r.lock_shared("k");
    Guard permit = r.acquire_permits("p", 1, 2);
    const std::pair<int, std::string> hi{0, "hi\n"};
    CHECK(run_cli({"exec", "--url", u, "k", "--no-wait", "--shared", "--", "echo", "hi"}) == hi);
    CHECK(run_cli({"exec", "k", "--shared", "--url", u, "--no-wait", "echo", "hi"}) == hi);
    CHECK(run_cli({"exec", "--no-wait", "p", "--limit", "2", "--url=" + u, "echo", "hi"}) == hi);
    CHECK(run_cli({"exec", "--limit=2", "p", "--permits", "1", "--no-wait", "--url", u, "--", "echo", "hi"}) == hi);
    // --key: options around the keys; without --, CMD is the first word that is no option.
    CHECK(run_cli({"exec", "-k", "x", "--url", u, "--key=y", "--no-wait", "echo", "hi"}) == hi);
    CHECK(run_cli({"exec", "--url", u, "-kx", "-k", "y", "--", "echo", "hi"}) == hi);
}
