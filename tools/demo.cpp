// SPDX-License-Identifier: BSL-1.0
// tools/demo.cpp — `keylock demo`: why keylock exists, in one run.
//
// Requests such as "find the client with id X, or create it" are served by N processes of T
// threads each. Every request does what most request handlers do:
//
//     row = SELECT ... WHERE client_id = X      -- find
//     if (!row) { call the payment provider;     -- a few milliseconds
//                 INSERT ... client_id = X }     -- create
//
// The table has no UNIQUE constraint on client_id (think of a provider id added to an existing
// table, a composite natural key, or a document store), so nothing in the database stops two
// requests for one client that arrive together from both finding nothing and both inserting.
//
// With --backend none that is what happens. With a backend, registry.get_or_create() locks the
// client id around "find again, then create", so each client is created once; but a local://
// lock lives inside one process, so with several processes only a shared backend (redis://)
// prevents the duplicates. The demo counts them and says which of these it has just shown.
//
// --transaction shows the commit trap: each create runs in an explicit transaction (BEGIN
// IMMEDIATE; INSERT), and the rest of the request (a welcome e-mail) follows before COMMIT, as
// a framework's request-wide transaction does. Committed after get_or_create() has released the
// lock ('after'), the row is invisible to the next request for the client, which gets the lock,
// finds nothing and creates it again; committed by get_or_create()'s `commit`, under the lock
// ('inside'), it is there. `--transaction` alone runs both, one after the other.

#include "demo.hpp"
#include "common.hpp"

#include <sqlite3.h>

#include <keylock/keylock.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <variant>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

namespace keylock::cli {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// How long "create" waits between the failed lookup and the INSERT, as a call to a payment
// provider would. Long enough that, without a lock, concurrent requests for one client reliably
// all miss the lookup before the first INSERT commits.
constexpr auto provider_call = 2ms;

// What a request does after it has its client (with --transaction: before it commits).
constexpr auto rest_of_request = 2ms;

// When a --transaction run commits a create's transaction.
enum class Commit {
    none,    // no explicit transaction: each statement commits itself
    after,   // after get_or_create() has returned (and released the lock): the trap
    inside,  // by get_or_create()'s `commit`, while the key is still locked
};

// ---------------------------------------------------------------------------------------------
// A thin SQLite layer: every return code is checked; any failure throws with sqlite3_errmsg.

[[noreturn]] void sqlite_fail(sqlite3* db, const std::string& what) {
    throw std::runtime_error("sqlite: " + what + ": " + (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
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
    // Its result repeats the last step's error, which step() has reported already.
    ~Statement() { sqlite3_finalize(stmt_); }

    void bind(int index, std::string_view text) {
        if (sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT) !=
            SQLITE_OK) {
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
        sqlite3_reset(stmt_);           // its result repeats the last step's error, already reported
        sqlite3_clear_bindings(stmt_);  // always SQLITE_OK
    }

private:
    sqlite3* db_;
    sqlite3_stmt* stmt_ = nullptr;
};

class Connection {
public:
    explicit Connection(const std::string& path) {
        const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
        if (rc != SQLITE_OK) {
            const std::string message = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
            sqlite3_close(db_);
            throw std::runtime_error("sqlite: open '" + path + "': " + message);
        }
        try {
            // Writers queue up for the database lock instead of failing with SQLITE_BUSY.
            if (sqlite3_busy_timeout(db_, 30'000) != SQLITE_OK) sqlite_fail(db_, "busy_timeout");
            exec("PRAGMA synchronous = NORMAL");
        } catch (...) {
            sqlite3_close(db_);  // a constructor that throws runs no destructor
            throw;
        }
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    // Cannot be busy: the owners' Statement members are declared later, so finalized first.
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

    // An explicit transaction, holding SQLite's write lock until commit() (others queue up).
    void begin() { db_.exec("BEGIN IMMEDIATE"); }
    void commit() { db_.exec("COMMIT"); }

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
    db.exec("CREATE TABLE clients ("
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

// A temporary database file, removed (with its WAL and shared-memory files) at the end.
class TempDatabase {
public:
    TempDatabase() {
        std::string pattern = (std::filesystem::temp_directory_path() / "keylock-demo-XXXXXX.db").string();
        const int fd = mkstemps(pattern.data(), 3);
        if (fd < 0) {
            throw std::system_error(errno, std::generic_category(), "cannot create " + pattern);
        }
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

// ---------------------------------------------------------------------------------------------
// State shared by the parent and its worker processes, in one MAP_SHARED anonymous mapping.
// Atomics work across processes only when lock-free: otherwise each process would use a lock
// table of its own.

struct SharedState {
    std::atomic<std::int64_t> next_request{0};  // the next request index to serve
    std::atomic<int> ready{0};                  // worker threads waiting for `go`
    std::atomic<bool> go{false};                // set by the parent: start serving
    std::atomic<bool> failed{false};            // set on the first failure: everyone stops
};
static_assert(std::atomic<std::int64_t>::is_always_lock_free && std::atomic<int>::is_always_lock_free &&
              std::atomic<bool>::is_always_lock_free);

class SharedMapping {
public:
    SharedMapping() {
        void* p = mmap(nullptr, sizeof(SharedState), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
        state_ = new (p) SharedState;  // mapped memory holds no object until one is made there
    }
    SharedMapping(const SharedMapping&) = delete;
    SharedMapping& operator=(const SharedMapping&) = delete;
    ~SharedMapping() {
        state_->~SharedState();
        munmap(state_, sizeof(SharedState));
    }
    SharedState& operator*() const { return *state_; }

private:
    SharedState* state_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// A worker process: T threads, each with its own connection, serving requests until all R have
// been taken (by any process).

struct Settings {
    std::string backend = keylock::tools::default_url();  // a registry URL, or "none"
    int processes = 1;
    int threads = 16;
    int clients = 4;
    int requests = 400;
    std::string db_path;           // empty: a temporary file
    std::string transaction;       // --transaction: "after", "inside", "both"; empty: none
    Commit commit = Commit::none;  // this round's (from `transaction`)
    const char* argv0 = "keylock demo";
};

struct Worker {
    const Settings& s;
    SharedState& shared;
    KeyedLockRegistry* registry;  // null: no lock
    int process;
    std::atomic<bool> failed{false};

    // Stops every thread of every process. Only the first failure is printed: the others are
    // usually its consequences (and would repeat it once per thread).
    void fail(const char* what) noexcept {
        failed = true;
        if (!shared.failed.exchange(true)) std::fprintf(stderr, "%s: %s\n", s.argv0, what);
    }

    // One request with an explicit transaction around its create, committed as s.commit says.
    Client serve_in_transaction(ClientRepository& repo, const std::string& id) {
        bool open = false;  // a transaction this request began and has not committed yet
        auto find = [&] { return repo.find(id); };
        auto create = [&] {
            repo.begin();
            open = true;
            return repo.create(id);
        };
        auto commit = [&] {
            repo.commit();
            open = false;
        };
        Client client;
        if (registry == nullptr) {  // no lock: find, then create
            if (auto found = find()) return *found;
            client = create();
        } else if (s.commit == Commit::inside) {
            client = registry->get_or_create(id, find, create, commit);
        } else {
            client = registry->get_or_create(id, find, create);  // the lock is released here
        }
        if (open || s.commit == Commit::inside) std::this_thread::sleep_for(rest_of_request);
        if (open) commit();  // the trap: after the lock, when the next request may have looked
        return client;
    }

    void serve(int thread) noexcept {
        try {
            ClientRepository repo(s.db_path);
            std::seed_seq seed{process, thread};  // a different sequence per process and thread
            std::mt19937 rng(seed);
            std::uniform_int_distribution<int> pick(1, s.clients);

            shared.ready.fetch_add(1);
            // Start together, as a burst of webhooks does (a yield loop: this crosses processes).
            while (!shared.go.load() && !shared.failed.load()) std::this_thread::yield();

            while (!shared.failed.load() && shared.next_request.fetch_add(1) < s.requests) {
                const std::string id = "client-" + std::to_string(pick(rng));
                std::optional<Client> client;
                if (s.commit != Commit::none) {
                    client = serve_in_transaction(repo, id);
                } else if (registry != nullptr) {
                    // Find without the lock; if not found, lock the client id, find again, and
                    // create only if still not found.
                    client = registry->get_or_create(
                        id, [&] { return repo.find(id); }, [&] { return repo.create(id); });
                } else if (auto found = repo.find(id)) {
                    client = std::move(found);  // the usual code: nothing stops a concurrent create
                } else {
                    client = repo.create(id);
                }
                if (client->client_id != id) throw std::logic_error("got the wrong client");
            }
        } catch (const std::exception& e) {
            fail(e.what());
        } catch (...) {
            fail("unknown exception");
        }
    }
};

// Runs in the child right after fork(). It must never return into the parent's code (whose
// destructors would, e.g., delete the temporary database), so it ends with _exit.
[[noreturn]] void worker_process(const Settings& s, SharedState& shared, int process) noexcept {
    Worker worker{s, shared, nullptr, process};
    try {
        // Its own registry, made after fork(); a local:// registry is this process's alone.
        std::optional<KeyedLockRegistry> registry;
        if (s.backend != "none") worker.registry = &registry.emplace(KeyedLockRegistry::from_url(s.backend));
        std::vector<std::jthread> threads;
        try {
            threads.reserve(static_cast<std::size_t>(s.threads));
            for (int t = 0; t < s.threads; ++t) threads.emplace_back([&worker, t] { worker.serve(t); });
        } catch (const std::exception& e) {
            // Here, before `threads` joins: the threads started wait for `go` or `failed`.
            worker.fail((std::string("cannot start a thread: ") + e.what()).c_str());
        }
        threads.clear();  // joins; then the registry closes, which sends the last releases
    } catch (const std::exception& e) {
        worker.fail(e.what());
    } catch (...) {
        worker.fail("unknown exception");
    }
    _exit(worker.failed ? EXIT_FAILURE : 0);  // no stdio flush: the parent's buffers are not ours
}

// The worker processes, from the parent's side. However the parent's code ends, none is left
// behind: the destructor stops those still running and reaps them.
class Workers {
public:
    explicit Workers(SharedState& shared) : shared_(shared) {}
    Workers(const Workers&) = delete;
    Workers& operator=(const Workers&) = delete;
    ~Workers() {
        if (running_ == 0) return;
        shared_.failed = true;  // they wait for `go` or this
        reap(true);
    }

    // Only call this while the process has no other thread: the child of a multithreaded
    // process may inherit a lock (of malloc, of a library) held by a thread that it lacks.
    void start(const Settings& s) {
        children_.reserve(static_cast<std::size_t>(s.processes));
        std::fflush(nullptr);  // or each child would inherit, and print, what is still buffered
        for (int p = 0; p < s.processes; ++p) {
            const pid_t pid = fork();
            if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
            if (pid == 0) worker_process(s, shared_, p);
            children_.push_back(Child{pid});
            ++running_;
        }
    }

    // Reaps the children that have ended (with `block`, all of them). True if any had ended.
    bool reap(bool block) {
        for (Child& c : children_) {
            if (c.done) continue;
            pid_t r = 0;
            do {
                r = waitpid(c.pid, &c.status, block ? 0 : WNOHANG);
            } while (r < 0 && errno == EINTR);
            if (r == 0) continue;
            if (r < 0) c.status = W_EXITCODE(EXIT_FAILURE, 0);  // not our child: cannot happen
            c.done = true;
            --running_;
        }
        return running_ < static_cast<int>(children_.size());
    }

    // After reap(true): the number of processes that failed; explains those killed by a signal.
    int failures(const char* argv0) const {
        int failed = 0;
        for (const Child& c : children_) {
            if (WIFSIGNALED(c.status)) {
                std::fprintf(stderr, "%s: worker process %d was killed by signal %d (%s)\n", argv0,
                             static_cast<int>(c.pid), WTERMSIG(c.status), strsignal(WTERMSIG(c.status)));
            }
            failed += WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0 ? 0 : 1;
        }
        return failed;
    }

private:
    struct Child {
        pid_t pid;
        int status = 0;  // from waitpid, once done
        bool done = false;
    };
    SharedState& shared_;
    std::vector<Child> children_;
    int running_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Command line

struct UsageError {
    std::string problem;  // empty: --help
};

void print_usage(std::FILE* out, const char* argv0) {
    std::fprintf(out,
                 "usage: %s [--backend URL|none] [--processes N] [--threads N] [--clients N]\n"
                 "          [--requests N] [--db PATH] [--transaction[=after|inside]]\n"
                 "Get-or-create from several processes and threads against one SQLite table with\n"
                 "no UNIQUE constraint, with or without keylock; counts the duplicate clients.\n"
                 "  --backend URL  local://, redis://HOST:PORT, ... or 'none' for no lock\n"
                 "                 (default: $KEYLOCK_URL, or local://)\n"
                 "  --processes N  worker processes, 1..64 (default 1)\n"
                 "  --threads N    threads per process, 1..1024 (default 16)\n"
                 "  --clients N    client ids the requests are drawn from, 1..1000000 (default 4)\n"
                 "  --requests N   requests in all processes together, 1..100000000 (default 400)\n"
                 "  --db PATH      SQLite file; its table 'clients' is dropped and recreated\n"
                 "                 (default: a temporary file, deleted afterwards)\n"
                 "  --transaction[=WHEN]  create in an explicit transaction, committed 'after'\n"
                 "                 get_or_create() released the lock (the commit trap) or\n"
                 "                 'inside' it, by get_or_create()'s commit; alone: both runs\n"
                 "Exit status: 0 done; 1 duplicates despite a lock, or a failure; 64 usage error;\n"
                 "69 backend unreachable; 78 bad backend URL.\n",
                 argv0);
}

namespace po = boost::program_options;

// An option's value: a whole number from 1 to `max`, which notify() stores in `to`.
po::typed_value<std::string>* number(std::string option, int& to, int max) {
    return po::value<std::string>()->notifier([option = std::move(option), &to, max](const std::string& text) {
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), to);
        if (ec != std::errc{} || end != text.data() + text.size() || to < 1 || to > max) {
            throw UsageError{option + " wants a whole number from 1 to " + std::to_string(max) + ", not '" + text +
                             "'"};
        }
    });
}

// An option's value: text that must not be empty, which notify() stores in `to`.
po::typed_value<std::string>* text(std::string option, std::string& to) {
    return po::value(&to)->notifier([option = std::move(option)](const std::string& value) {
        if (value.empty()) throw UsageError{option + " needs a non-empty value"};
    });
}

Settings parse_args(int argc, char** argv, const char* argv0) {
    Settings s;
    s.argv0 = argv0;
    po::options_description desc;  // print_usage has the text
    desc.add_options()("backend", text("--backend", s.backend))("db", text("--db", s.db_path))(
        "processes", number("--processes", s.processes, 64))("threads", number("--threads", s.threads, 1024))(
        "clients", number("--clients", s.clients, 1'000'000))("requests",
                                                              number("--requests", s.requests, 100'000'000))(
        "transaction", po::value(&s.transaction)->implicit_value("both")->notifier([](const std::string& when) {
            if (when != "after" && when != "inside" && when != "both") {
                throw UsageError{"--transaction wants 'after' or 'inside' (or nothing: both), not '" + when + "'"};
            }
        }))("help,h", "");
    po::parsed_options parsed =
        po::command_line_parser(argc, argv).options(desc).style(keylock::tools::option_style).run();
    const std::vector<std::string> operands = keylock::tools::take_operands(parsed);
    if (!operands.empty()) throw UsageError{"unexpected argument '" + operands.front() + "'"};
    po::variables_map vm;
    po::store(parsed, vm);
    if (vm.count("help") != 0) throw UsageError{};
    po::notify(vm);  // checks and stores the values
    return s;
}

// ---------------------------------------------------------------------------------------------
// The demo

const char* plural(int n, const char* one, const char* many) { return n == 1 ? one : many; }

// Checks the backend up front, so that a bad URL or an unreachable server is reported once and
// with its own exit status. Returns describe() (passwords redacted), or the exit status.
std::variant<std::string, int> check_backend(const Settings& s) {
    try {
        // Gone at the end of this scope, before fork(): a redis registry has an I/O thread.
        auto registry = KeyedLockRegistry::from_url(s.backend);
        // One round trip, unlocked at once. Not try_lock: its one attempt ends as a timeout,
        // not as an error, when the server cannot be reached; lock() retries for the backend's
        // connect_timeout, then reports `unavailable`.
        registry.lock("keylock-demo-probe");
        return registry.describe();
    } catch (const Error& e) {
        keylock::tools::print_error(s.argv0, e.what());
        return keylock::tools::exit_status_of(e.code(), EXIT_FAILURE);
    }
}

struct RoundResult {
    int status = 0;
    long long duplicates = 0;
};

// One run of every worker against a fresh table; prints the counts and what they show.
RoundResult round(const Settings& s, bool none, bool per_process) {
    SharedMapping mapping;
    SharedState& shared = *mapping;
    Workers workers(shared);  // after `mapping`: stops and reaps the workers before it goes
    workers.start(s);
    // Start when every thread has its connection, unless a worker failed or died first (a
    // process that crashed never counts its threads: reap() keeps this from waiting forever).
    const int all_threads = s.processes * s.threads;
    while (shared.ready.load() < all_threads && !shared.failed.load() && !workers.reap(false)) {
        std::this_thread::sleep_for(100us);
    }
    const auto start = Clock::now();
    shared.go = true;
    if (workers.reap(false)) shared.failed = true;  // one died before go: stop the others for it
    workers.reap(true);
    const auto elapsed = Clock::now() - start;
    if (const int failed = workers.failures(s.argv0); failed > 0 || shared.failed.load()) {
        std::fprintf(stderr, "%s: %d of %d worker %s failed\n", s.argv0, failed, s.processes,
                     plural(s.processes, "process", "processes"));
        return {EXIT_FAILURE};
    }

    const Count count = count_clients(s.db_path);
    const long long duplicates = count.rows - count.distinct;
    const auto us = std::max<long long>(1, std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count());
    std::printf("rows: %lld\ndistinct: %lld\nduplicates: %lld\n", static_cast<long long>(count.rows),
                static_cast<long long>(count.distinct), duplicates);
    std::printf("throughput: %.0f requests/s (%lld ms)\n\n", s.requests * 1e6 / static_cast<double>(us), us / 1000);

    if (duplicates > 0 && none) {
        std::printf("Without a lock, requests for the same client both found nothing and both "
                    "created it: %lld duplicate clients. keylock's get_or_create() prevents this "
                    "(try --backend %s).\n",
                    duplicates, s.processes > 1 ? "redis://HOST:PORT" : "local://");
    } else if (duplicates > 0 && per_process) {
        std::printf("local:// locks exist only inside one process: each of the %d processes had "
                    "its own registry, so requests for the same client in different processes "
                    "did not exclude each other, and each process created them: %lld duplicate "
                    "clients. Processes need a shared backend, such as redis://.\n",
                    s.processes, duplicates);
    } else if (duplicates > 0 && s.commit == Commit::after) {
        std::printf("Committed after the lock was released, a new client was not yet visible to "
                    "the next request for it, which took the lock, found nothing and created it "
                    "again: %lld duplicate clients. The lock was kept; the commit came too late. "
                    "Commit inside the lock (--transaction=inside).\n",
                    duplicates);
    } else if (duplicates > 0) {
        std::printf("FAILED: %lld duplicate clients despite keylock\n", duplicates);
        return {EXIT_FAILURE, duplicates};
    } else if (none || per_process) {
        std::printf("Every client was created exactly once, but this run was lucky: nothing "
                    "prevented duplicates (%s).\n",
                    none ? "there was no lock" : "local:// locks do not reach across processes");
    } else if (s.commit == Commit::after) {
        std::printf("Every client was created exactly once, but this run was lucky: the commit "
                    "after the lock leaves a window for duplicates.\n");
    } else {
        std::printf("keylock: every client was created exactly once.\n");
    }
    std::printf("\n");
    return {0, duplicates};
}

// Runs the demo once the options are known. Throws for failures other than the backend's.
int run(Settings& s) {
    const bool none = s.backend == "none";
    std::string backend = "none (no lock)";
    if (!none) {
        auto checked = check_backend(s);
        if (const int* status = std::get_if<int>(&checked)) return *status;
        backend = std::get<std::string>(std::move(checked));
    }
    // Several processes, each with a local:// registry of its own: no lock across them.
    const bool per_process = backend.starts_with("local://") && s.processes > 1;

    std::optional<TempDatabase> temp;
    if (s.db_path.empty()) s.db_path = temp.emplace().path();
    create_fresh_table(s.db_path);  // its connection is closed: none may cross a fork()

    std::printf("get-or-create: %d %s for %d client %s from %d %s x %d %s\n", s.requests,
                plural(s.requests, "request", "requests"), s.clients, plural(s.clients, "id", "ids"), s.processes,
                plural(s.processes, "process", "processes"), s.threads, plural(s.threads, "thread", "threads"));
    std::printf("backend: %s\n", backend.c_str());
    std::printf("database: %s (SQLite %s, WAL; no UNIQUE constraint on client_id)\n", s.db_path.c_str(),
                sqlite3_libversion());
    std::printf("each create waits %lld ms first, like a call to a payment provider\n\n",
                static_cast<long long>(provider_call.count()));

    if (s.transaction.empty()) return round(s, none, per_process).status;
    std::printf("each create is a transaction (BEGIN IMMEDIATE; INSERT), committed after the rest of\n"
                "the request (%lld ms more)\n\n",
                static_cast<long long>(rest_of_request.count()));
    RoundResult after, inside;
    if (s.transaction != "inside") {
        std::printf("-- commit after get_or_create() has released the lock --\n");
        s.commit = Commit::after;
        after = round(s, none, per_process);
        if (after.status != 0) return after.status;
    }
    if (s.transaction != "after") {
        if (s.transaction == "both") create_fresh_table(s.db_path);
        std::printf("-- commit inside the lock: get_or_create(key, find, create, commit) --\n");
        s.commit = Commit::inside;
        inside = round(s, none, per_process);
        if (inside.status != 0) return inside.status;
    }
    if (s.transaction == "both" && !none && !per_process) {
        std::printf("The commit trap: %lld duplicates with the commit after the lock, %lld with the commit inside "
                    "it. Commit before the lock is released.\n",
                    after.duplicates, inside.duplicates);
    }
    return 0;
}

}  // namespace

int demo_main(int argc, char** argv) {
    const char* argv0 = argc > 0 && argv[0] != nullptr ? argv[0] : "keylock demo";
    try {
        Settings settings = parse_args(argc, argv, argv0);
        return run(settings);
    } catch (const UsageError& e) {
        if (e.problem.empty()) {
            print_usage(stdout, argv0);
            return 0;
        }
        return keylock::tools::usage_error(argv0, "[OPTIONS]", e.problem);
    } catch (const po::error& e) {
        return keylock::tools::usage_error(argv0, "[OPTIONS]", e.what());
    } catch (const std::exception& e) {
        keylock::tools::print_error(argv0, e.what());
        return EXIT_FAILURE;
    }
}

}  // namespace keylock::cli
