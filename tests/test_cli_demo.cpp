// SPDX-License-Identifier: BSL-1.0
// `keylock demo` end to end: the real binary (KEYLOCK_CLI_PATH, defined by CMake), run as a
// user would, its printed counts checked. Without a lock, and with local:// across processes,
// duplicates appear; with local:// in one process, and with redis:// across processes, none do.
#include <catch2/catch.hpp>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli_run.hpp"
#include "redis_server.hpp"

namespace {

struct Result {
    int exit_code = -1;  // 128 + signal if it was killed
    std::string output;  // stdout and stderr, interleaved
};

/// Runs `keylock demo args...` to the end (and every worker process: they share the pipe).
Result run(std::vector<std::string> args) {
    args.insert(args.begin(), "demo");
    auto [status, output] = keylock::test::run_cli(args);
    return {status, output};
}

/// The number on the line that begins with `label` (e.g. "rows: "), if there is one.
std::optional<long long> number(const std::string& output, const std::string& label) {
    std::istringstream lines(output);
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind(label, 0) == 0) return std::stoll(line.substr(label.size()));
    }
    return std::nullopt;
}

struct Counts {
    long long rows = -1, distinct = -1, duplicates = -1;
};

/// Runs the demo's workload with small parameters on `backend` and returns its counts.
Counts demo(const std::string& backend, int processes) {
    const Result r = run({"--backend", backend, "--processes", std::to_string(processes), "--threads", "8", "--clients",
                          "2", "--requests", "200"});
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    const auto rows = number(r.output, "rows: ");
    const auto distinct = number(r.output, "distinct: ");
    const auto duplicates = number(r.output, "duplicates: ");
    REQUIRE(rows.has_value());
    REQUIRE(distinct.has_value());
    REQUIRE(duplicates.has_value());
    CHECK(*duplicates == *rows - *distinct);
    return Counts{*rows, *distinct, *duplicates};
}

}  // namespace

// A race that nothing prevents shows itself in almost every run, but not in every one: on a
// loaded machine a process may not be scheduled during another's 2 ms create. So the two tests
// that expect duplicates allow three runs; those that expect none get one (any duplicate fails).
constexpr int kRacyAttempts = 3;

TEST_CASE("keylock demo: without a lock, concurrent requests create duplicate clients", "[cli]") {
    Counts c;
    for (int attempt = 0; attempt < kRacyAttempts && c.duplicates <= 0; ++attempt) {
        c = demo("none", 1);
        CHECK(c.distinct == 2);
    }
    CHECK(c.duplicates > 0);
}

TEST_CASE("keylock demo: local:// in one process creates every client once", "[cli]") {
    const Counts c = demo("local://", 1);
    CHECK(c.duplicates == 0);
    CHECK(c.rows == 2);
    CHECK(c.distinct == 2);
}

TEST_CASE("keylock demo: local:// in several processes creates duplicates and says why", "[cli]") {
    Result r;
    for (int attempt = 0; attempt < kRacyAttempts; ++attempt) {
        r = run({"--backend", "local://", "--processes", "3", "--threads", "8", "--clients", "2", "--requests", "200"});
        if (number(r.output, "duplicates: ").value_or(0) > 0) break;
    }
    INFO(r.output);
    CHECK(r.exit_code == 0);  // the expected demonstration, not a failure
    CHECK(number(r.output, "distinct: ") == 2);
    CHECK(number(r.output, "duplicates: ").value_or(0) > 0);
    CHECK_THAT(r.output, Catch::Contains("local:// locks exist only inside one process"));
    CHECK_THAT(r.output, Catch::Contains("redis://"));
}

TEST_CASE("keylock demo: redis:// in several processes creates every client once", "[cli][redis]") {
    keylock::test::RedisServer server;
    const Counts c = demo(keylock::test::url(server), 3);
    CHECK(c.duplicates == 0);
    CHECK(c.rows == 2);
    CHECK(c.distinct == 2);
}

TEST_CASE("keylock demo: exit statuses for usage errors, bad URLs and --help", "[cli]") {
    const Result zero_threads = run({"--threads", "0"});
    CHECK(zero_threads.exit_code == 64);
    CHECK_THAT(zero_threads.output, Catch::Contains("--threads wants a whole number from 1 to 1024"));
    CHECK_THAT(zero_threads.output, Catch::Contains("usage:"));

    CHECK(run({"--no-such-option"}).exit_code == 64);
    CHECK(run({"--requests"}).exit_code == 64);

    const Result bad_url = run({"--backend", "nosuch://x"});
    CHECK(bad_url.exit_code == 78);
    CHECK_THAT(bad_url.output, Catch::Contains("nosuch"));

    const Result help = run({"--help"});
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.output, Catch::Contains("usage:"));
    CHECK_THAT(help.output, Catch::Contains("--processes"));
}

namespace {
/// The number on the first line that begins with `label` after the line that contains `section`.
std::optional<long long> number_after(const std::string& output, const std::string& section, const std::string& label) {
    const auto at = output.find(section);
    if (at == std::string::npos) return std::nullopt;
    return number(output.substr(at), label);
}
}  // namespace

TEST_CASE("keylock demo --transaction: a commit after the lock duplicates, a commit inside it does not", "[cli]") {
    // The trap needs two requests for one client at once (then the second always duplicates,
    // since it waits for the lock the first releases before its commit): racy like the others.
    const std::string after = "-- commit after", inside = "-- commit inside";
    for (const std::string& backend : {std::string("local://"), std::string("none")}) {
        INFO(backend);
        for (int attempt = 1;; ++attempt) {
            const Result r =
                run({"--backend", backend, "--transaction", "--threads", "8", "--clients", "2", "--requests", "100"});
            INFO(r.output);
            REQUIRE(r.exit_code == 0);
            const auto dup_after = number_after(r.output, after, "duplicates: ");
            const auto dup_inside = number_after(r.output, inside, "duplicates: ");
            REQUIRE(dup_after.has_value());
            REQUIRE(dup_inside.has_value());
            if (backend == "local://") CHECK(*dup_inside == 0);  // the lock holds until the commit
            if (*dup_after > 0 && (backend == "local://" || *dup_inside > 0)) {
                if (backend == "local://") CHECK_THAT(r.output, Catch::Contains("The commit trap: "));
                break;
            }
            REQUIRE(attempt < kRacyAttempts);
        }
    }
    // One of the two alone, and a bad value.
    const Result only_inside = run({"--transaction=inside", "--threads", "8", "--clients", "2", "--requests", "100"});
    CHECK(only_inside.exit_code == 0);
    CHECK(number(only_inside.output, "duplicates: ") == 0);
    CHECK_THAT(only_inside.output, !Catch::Contains(after));
    const Result bad = run({"--transaction=later"});
    CHECK(bad.exit_code == 64);
    CHECK_THAT(bad.output, Catch::Contains("--transaction wants 'after' or 'inside'"));
}
