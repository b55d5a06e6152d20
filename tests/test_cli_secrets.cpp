// SPDX-License-Identifier: BSL-1.0
// The keylock command keeps a Redis password to itself: never in its messages (whatever the
// server answers), out of the command line with --url-file, out of CMD's environment.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "cli_run.hpp"
#include "fake_server.hpp"
#include "redis_server.hpp"

using keylock::test::FakeServer;
using keylock::test::RedisServer;
using keylock::test::run_cli;

namespace {

/// In URLs, and never to be seen in what keylock prints or CMD sees.
const std::string password = "Pw-cli-5a7e-never-shown";
const std::string user = "user-cli-5a7e";

/// A file of the test's, removed at the end.
struct TempFile {
    explicit TempFile(const std::string& text) {
        std::string pattern = (std::filesystem::temp_directory_path() / "keylock-url-XXXXXX").string();
        const int fd = ::mkstemp(pattern.data());
        if (fd < 0) throw std::runtime_error("mkstemp failed");
        ::close(fd);
        path = pattern;
        std::ofstream(path) << text;
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    ~TempFile() { std::filesystem::remove(path); }
    std::string path;
};

std::string with_password(int port, const std::string& userinfo = ":" + password) {
    return "redis://" + userinfo + "@127.0.0.1:" + std::to_string(port) + "/?connect_timeout=500ms";
}

}  // namespace

TEST_CASE("keylock status: a server that refuses or echoes the password does not bring it to stderr", "[cli][redis]") {
    RedisServer no_password;  // refuses AUTH, naming it
    FakeServer echo(FakeServer::Echo{});
    for (const int port : {no_password.port(), static_cast<int>(echo.port())}) {
        for (const std::string& userinfo : {":" + password, std::string(user).append(":").append(password)}) {
            const std::string url = with_password(port, userinfo);
            INFO(url);
            auto [status, out] = run_cli({"status", "--url", url, "k"});
            INFO(out);
            CHECK(status == 69);
            CHECK_THAT(out, Catch::StartsWith("keylock status: ") && Catch::Contains("refused AUTH ("));
            CHECK_THAT(out, !Catch::Contains(password) && !Catch::Contains(user));
            TempFile file(url + "\n");
            auto [from_file, from_file_out] = run_cli({"status", "--url-file", file.path, "k"});
            CHECK(from_file == 69);
            CHECK(from_file_out == out);
        }
    }
}

TEST_CASE("keylock --url-file: the URL from a file's first line, for every command that takes --url", "[cli][redis]") {
    RedisServer server({"--requirepass", password});
    const std::string url = with_password(server.port());
    // Blanks around the URL and lines after it are not the URL's.
    TempFile file("  " + url + " \t\r\nredis://second-line-ignored\n");
    CHECK(run_cli({"status", "--url-file", file.path, "k"}) == std::pair<int, std::string>{0, "free\n"});
    CHECK(run_cli({"status", "--url-file=" + file.path, "k"}) == std::pair<int, std::string>{0, "free\n"});
    CHECK(run_cli({"exec", "--url-file", file.path, "k", "--", "sh", "-c", "exit 4"}).first == 4);
    CHECK(run_cli({"release", "--force", "--url-file", file.path, "k"}) == std::pair<int, std::string>{0, "free\n"});
    // A file without a final newline; --url-file wins over KEYLOCK_URL.
    TempFile bare(url);
    CHECK(run_cli({"status", "--url-file", bare.path, "k"}, {"KEYLOCK_URL=redis://127.0.0.1:1"}).first == 0);

    // Usage errors (64), each naming the file.
    const TempFile empty("");
    const TempFile blank(" \n" + url + "\n");  // the first line is the URL's, even blank
    const std::string missing = file.path + "-missing";
    const std::string directory = std::filesystem::temp_directory_path().string();
    for (const auto& [path, why] : std::vector<std::pair<std::string, std::string>>{
             {empty.path, "no URL in its first line"},
             {blank.path, "no URL in its first line"},
             {missing, "No such file or directory"},
             {directory, "Is a directory"},
         }) {
        for (const std::vector<std::string>& args :
             {std::vector<std::string>{"status", "--url-file", path, "k"},
              std::vector<std::string>{"release", "--force", "--url-file", path, "k"},
              std::vector<std::string>{"exec", "--url-file", path, "k", "--", "true"}}) {
            auto [status, out] = run_cli(args);
            INFO(out);
            CHECK(status == 64);
            CHECK_THAT(out, Catch::Contains(std::string("--url-file ").append(path).append(": ").append(why)));
        }
    }
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"status", "--url", url, "--url-file", file.path, "k"},
          std::vector<std::string>{"exec", "--url-file", file.path, "k", "--url", url, "--", "true"}}) {
        auto [status, out] = run_cli(args);
        INFO(out);
        CHECK(status == 64);
        CHECK_THAT(out, Catch::Contains("--url and --url-file exclude each other"));
    }
}

TEST_CASE("keylock exec keeps KEYLOCK_URL out of CMD's environment unless --pass-url", "[cli][redis]") {
    RedisServer server({"--requirepass", password});
    const std::string url = with_password(server.port());
    const std::vector<std::string> env{"KEYLOCK_URL=" + url};
    SECTION("from KEYLOCK_URL") {
        auto [status, out] = run_cli({"exec", "k", "--", "env"}, env);
        INFO(out);
        REQUIRE(status == 0);
        CHECK_THAT(out, Catch::Contains("KEYLOCK_FENCING_TOKEN="));  // it is CMD's environment
        CHECK_THAT(out, !Catch::Contains("KEYLOCK_URL") && !Catch::Contains(password));
    }
    SECTION("from --url-file: the file's URL is not put there either") {
        TempFile file(url + "\n");
        auto [status, out] = run_cli({"exec", "--url-file", file.path, "k", "--", "env"});
        INFO(out);
        REQUIRE(status == 0);
        CHECK_THAT(out, Catch::Contains("KEYLOCK_FENCING_TOKEN="));
        CHECK_THAT(out, !Catch::Contains("KEYLOCK_URL") && !Catch::Contains(password));
    }
    SECTION("--pass-url passes KEYLOCK_URL on") {
        auto [status, out] = run_cli({"exec", "--pass-url", "k", "--", "env"}, env);
        INFO(out);
        REQUIRE(status == 0);
        CHECK_THAT(out,
                   Catch::Contains("\nKEYLOCK_URL=" + url + "\n") || Catch::StartsWith("KEYLOCK_URL=" + url + "\n"));
        // A CMD that runs keylock again finds the URL it needs.
        auto [nested, nested_out] = run_cli({"exec", "--pass-url", "k", "--", KEYLOCK_CLI_PATH, "status", "k"}, env);
        CHECK(nested == 0);
        CHECK_THAT(nested_out, Catch::StartsWith("held token="));
    }
}
