// get_or_create_demo — why keylock exists, in one run.
//
// Many threads handle requests such as "find the client with id X, or create it". Each does
// what most request handlers do:
//
//     row = SELECT ... WHERE client_id = X      -- find
//     if (!row) { call the payment provider;     -- a few milliseconds
//                 INSERT ... client_id = X }     -- create
//
// The table has no UNIQUE constraint on client_id (think of a provider id added to an existing
// table, a composite natural key, or a document store), so nothing in the database stops two
// requests for one client that arrive together from both finding nothing and both inserting.
//
// The demo runs that workload twice against one real SQLite file, on a fresh table each time:
//   1. without locking: duplicate clients appear;
//   2. with keylock: registry.get_or_create(client_id, find, create) locks the client id
//      around "find again, then create", so each client is created exactly once, while
//      requests for different clients still run in parallel.
//
// Usage: get_or_create_demo [--threads N] [--clients N] [--requests N] [--db PATH]
// The registry comes from KEYLOCK_URL (default local://). Exit status 0 means the keylock run
// created no duplicates.

#include <sqlite3.h>

#include <keylock/keylock.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <latch>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// How long "create" waits between the failed lookup and the INSERT, as a call to a payment
// provider would. Long enough that, without a lock, concurrent requests for one client reliably
// all miss the lookup before the first INSERT commits.
constexpr auto provider_call = 2ms;

// ---------------------------------------------------------------------------------------------
// A thin SQLite layer: every return code is checked; any failure throws with sqlite3_errmsg.

[[noreturn]] void sqlite_fail(sqlite3* db, const std::string& what) {
    throw std::runtime_error("sqlite: " + what + ": " +
                             (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}

class Statement {
public:
    Statement(sqlite3* db, const char* sql) : db_(db) {
        if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
            sqlite_fail(db, std::string("prepare '") + sql + "'");
        }
    }
    Statement(const Statement&) = delete;
    Statement& operator=(const Statement&) = delete;
    ~Statement() { sqlite3_finalize(stmt_); }

    void bind(int index, std::string_view text) {
        if (sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()),
                              SQLITE_TRANSIENT) != SQLITE_OK) {
            sqlite_fail(db_, "bind");
        }
    }
    // true: a row is available (read it with column_*); false: done.
    bool step() {
        switch (sqlite3_step(stmt_)) {
            case SQLITE_ROW: return true;
            case SQLITE_DONE: return false;
            default: sqlite_fail(db_, std::string("step '") + sqlite3_sql(stmt_) + "'");
        }
    }
    std::int64_t column_int(int i) { return sqlite3_column_int64(stmt_, i); }
    std::string column_text(int i) {
        const auto* text = sqlite3_column_text(stmt_, i);
        return text != nullptr ? reinterpret_cast<const char*>(text) : "";
    }
    // Ends the statement's implicit transaction, so the next run sees the latest commits.
    void reset() {
        sqlite3_reset(stmt_);  // its result repeats the last step's error, already reported
        sqlite3_clear_bindings(stmt_);
    }

private:
    sqlite3* db_;
    sqlite3_stmt* stmt_ = nullptr;
};

class Connection {
public:
    explicit Connection(const std::string& path) {
        const int rc = sqlite3_open_v2(path.c_str(), &db_,
                                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
        if (rc != SQLITE_OK) {
            const std::string message = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
            sqlite3_close(db_);
            throw std::runtime_error("sqlite: open '" + path + "': " + message);
        }
        // Writers queue up for the database lock instead of failing with SQLITE_BUSY.
        if (sqlite3_busy_timeout(db_, 30'000) != SQLITE_OK) sqlite_fail(db_, "busy_timeout");
        exec("PRAGMA synchronous = NORMAL");
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    ~Connection() { sqlite3_close(db_); }

    void exec(const char* sql) {
        if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
            sqlite_fail(db_, std::string("exec '") + sql + "'");
        }
    }
    sqlite3* get() const { return db_; }

private:
    sqlite3* db_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// The application code: a client repository with find and create, one per thread.

struct Client {
    std::int64_t id;        // the row id
    std::string client_id;  // the id the outside world knows the client by
};

class ClientRepository {
public:
    explicit ClientRepository(const std::string& path) : db_(path) {}

    std::optional<Client> find(const std::string& client_id) {
        select_.bind(1, client_id);
        std::optional<Client> found;
        if (select_.step()) found = Client{select_.column_int(0), client_id};
        select_.reset();
        return found;
    }

    Client create(const std::string& client_id) {
        std::this_thread::sleep_for(provider_call);  // e.g. create the customer at the provider
        insert_.bind(1, client_id);
        insert_.step();
        insert_.reset();
        return Client{sqlite3_last_insert_rowid(db_.get()), client_id};
    }

private:
    Connection db_;
    Statement select_{db_.get(), "SELECT id FROM clients WHERE client_id = ? ORDER BY id LIMIT 1"};
    Statement insert_{db_.get(), "INSERT INTO clients (client_id) VALUES (?)"};
};

void create_fresh_table(const std::string& path) {
    Connection db(path);
    {
        // Readers never block the writer, and vice versa. The mode is stored in the file.
        Statement wal(db.get(), "PRAGMA journal_mode = WAL");
        const std::string mode = wal.step() ? wal.column_text(0) : "";
        if (mode != "wal") throw std::runtime_error("sqlite: cannot use WAL mode, got '" + mode + "'");
    }
    db.exec("DROP TABLE IF EXISTS clients");
    // Deliberately no UNIQUE constraint on client_id.
    db.exec(
        "CREATE TABLE clients ("
        "  id         INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  client_id  TEXT NOT NULL,"
        "  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))");
}

struct Count {
    std::int64_t rows = 0;
    std::int64_t distinct = 0;
};

Count count_clients(const std::string& path) {
    Connection db(path);
    Statement count(db.get(), "SELECT COUNT(*), COUNT(DISTINCT client_id) FROM clients");
    if (!count.step()) throw std::runtime_error("sqlite: COUNT returned no row");
    return Count{count.column_int(0), count.column_int(1)};
}

// ---------------------------------------------------------------------------------------------
// The workload: `threads` threads serve `requests` requests between them, each for a client id
// drawn at random from `clients` ids.

struct Settings {
    int threads = 16;
    int clients = 4;
    int requests = 400;
    std::string db_path;  // empty: a temporary file
};

using GetOrCreate = std::function<Client(ClientRepository&, const std::string& client_id)>;

// Runs the workload on a fresh table; returns the elapsed time.
Clock::duration run(const Settings& s, const GetOrCreate& get_or_create) {
    create_fresh_table(s.db_path);

    std::vector<std::string> client_ids;
    for (int i = 1; i <= s.clients; ++i) client_ids.push_back("client-" + std::to_string(i));

    std::atomic<int> next_request{0};
    std::latch ready(s.threads + 1);
    std::mutex error_mutex;
    std::exception_ptr error;

    std::vector<std::jthread> threads;
    for (int t = 0; t < s.threads; ++t) {
        threads.emplace_back([&, t] {
            bool started = false;
            try {
                ClientRepository repo(s.db_path);  // each thread has its own connection
                std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1u);
                std::uniform_int_distribution<std::size_t> pick(0, client_ids.size() - 1);
                started = true;
                ready.arrive_and_wait();  // start together, as a burst of webhooks does
                while (next_request.fetch_add(1) < s.requests) {
                    const std::string& client_id = client_ids[pick(rng)];
                    const Client c = get_or_create(repo, client_id);
                    if (c.client_id != client_id) throw std::logic_error("got the wrong client");
                }
            } catch (...) {
                std::lock_guard lk(error_mutex);
                if (!error) error = std::current_exception();
                if (!started) ready.count_down();  // never leave the others waiting
                next_request = s.requests;         // make the others stop early
            }
        });
    }
    ready.arrive_and_wait();
    const auto start = Clock::now();
    threads.clear();  // joins
    const auto elapsed = Clock::now() - start;
    if (error) std::rethrow_exception(error);
    return elapsed;
}

void report(const char* label, Count c, Clock::duration elapsed) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count();
    std::printf("%-28s rows: %-5lld distinct: %-4lld duplicates: %-5lld (%lld ms)\n", label,
                static_cast<long long>(c.rows), static_cast<long long>(c.distinct),
                static_cast<long long>(c.rows - c.distinct), static_cast<long long>(ms));
}

// ---------------------------------------------------------------------------------------------
// Command line

constexpr int exit_usage = 64;  // EX_USAGE

[[noreturn]] void usage(const char* argv0, const std::string& problem, int status = exit_usage) {
    std::FILE* out = status == 0 ? stdout : stderr;
    if (!problem.empty()) std::fprintf(out, "%s: %s\n", argv0, problem.c_str());
    std::fprintf(out,
                 "usage: %s [--threads N] [--clients N] [--requests N] [--db PATH]\n"
                 "  --threads N   concurrent request handlers, 1..1024 (default 16)\n"
                 "  --clients N   distinct client ids the requests are drawn from (default 4)\n"
                 "  --requests N  requests in total, per run (default 400)\n"
                 "  --db PATH     SQLite file to use; its table 'clients' is dropped and\n"
                 "                recreated (default: a temporary file, deleted afterwards)\n"
                 "The lock registry is configured by KEYLOCK_URL (default local://).\n",
                 argv0);
    std::exit(status);
}

int parse_count(const char* argv0, const std::string& option, const char* text, int max) {
    const std::string s = text;
    std::size_t used = 0;
    long value = 0;
    try {
        value = std::stol(s, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (s.empty() || used != s.size() || value < 1 || value > max) {
        usage(argv0, option + " wants a whole number from 1 to " + std::to_string(max) +
                         ", not '" + s + "'");
    }
    return static_cast<int>(value);
}

Settings parse_args(int argc, char** argv) {
    Settings s;
    const char* argv0 = argc > 0 ? argv[0] : "get_or_create_demo";
    for (int i = 1; i < argc; ++i) {
        const std::string option = argv[i];
        if (option == "--help" || option == "-h") usage(argv0, "", 0);
        if (option != "--threads" && option != "--clients" && option != "--requests" &&
            option != "--db") {
            usage(argv0, "unknown option '" + option + "'");
        }
        if (i + 1 >= argc) usage(argv0, option + " needs a value");
        const char* value = argv[++i];
        if (option == "--threads") s.threads = parse_count(argv0, option, value, 1024);
        if (option == "--clients") s.clients = parse_count(argv0, option, value, 1'000'000);
        if (option == "--requests") s.requests = parse_count(argv0, option, value, 100'000'000);
        if (option == "--db") {
            if (*value == '\0') usage(argv0, "--db needs a non-empty path");
            s.db_path = value;
        }
    }
    return s;
}

// A temporary database file, removed (with its WAL and shared-memory files) at the end.
class TempDatabase {
public:
    TempDatabase() {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "keylock-demo-XXXXXX.db").string();
        const int fd = mkstemps(pattern.data(), 3);
        if (fd < 0) throw std::runtime_error("cannot create a temporary file: " + pattern);
        close(fd);
        path_ = pattern;
    }
    TempDatabase(const TempDatabase&) = delete;
    TempDatabase& operator=(const TempDatabase&) = delete;
    ~TempDatabase() {
        std::error_code ignored;
        for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
            std::filesystem::remove(path_ + suffix, ignored);
        }
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

}  // namespace

int main(int argc, char** argv) {
    Settings settings = parse_args(argc, argv);
    try {
        std::optional<TempDatabase> temp;
        if (settings.db_path.empty()) settings.db_path = temp.emplace().path();

        auto registry = keylock::KeyedLockRegistry::from_env();  // KEYLOCK_URL, or local://

        std::printf("get-or-create: %d requests for %d client ids from %d threads\n",
                    settings.requests, settings.clients, settings.threads);
        std::printf("database: %s (SQLite %s, WAL; no UNIQUE constraint on client_id)\n",
                    settings.db_path.c_str(), sqlite3_libversion());
        std::printf("each create waits %lld ms first, like a call to a payment provider\n\n",
                    static_cast<long long>(provider_call.count()));

        // 1. The usual code: find, and create if not found. Nothing stops two requests for
        //    one client from both finding nothing, then both creating.
        const auto unlocked = run(settings, [](ClientRepository& repo, const std::string& id) {
            if (auto found = repo.find(id)) return *found;
            return repo.create(id);
        });
        const Count without = count_clients(settings.db_path);

        // 2. The same code through keylock: find without the lock; if not found, lock the
        //    client id, find again, and create only if still not found.
        const auto locked = run(settings, [&](ClientRepository& repo, const std::string& id) {
            return registry.get_or_create(
                id, [&] { return repo.find(id); }, [&] { return repo.create(id); });
        });
        const Count with = count_clients(settings.db_path);

        report("without keylock:", without, unlocked);
        report(("with keylock (" + registry.describe() + "):").c_str(), with, locked);

        if (with.rows != with.distinct) {
            std::printf("\nFAILED: %lld duplicate clients despite keylock\n",
                        static_cast<long long>(with.rows - with.distinct));
            return 1;
        }
        std::printf("\nkeylock: every client was created exactly once");
        if (without.rows > without.distinct) {
            std::printf(" (without it: %lld duplicates)",
                        static_cast<long long>(without.rows - without.distinct));
        }
        std::printf(".\n");
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "get_or_create_demo: %s\n", e.what());
        return 1;
    }
}
