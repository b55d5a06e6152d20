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
