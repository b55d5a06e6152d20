// SPDX-License-Identifier: BSL-1.0
// fencing — how a store uses fencing tokens to refuse a writer whose lock is no longer its own.
//
// A lock with a lease can be lost while its holder still works (the holder paused longer than
// the lease, Redis restarted): another process then holds the key, and both may write. Each
// acquisition's fencing token is larger than every earlier one of the key, so the store keeps
// the token of the last write it accepted and takes a write only with a larger token: the
// stale holder's write is refused instead of overwriting the newer one.
//
// Here against a real SQLite database (in memory); the region between the snippet markers is
// the sample in docs/semantics.md. Exits with 1 if a check fails.
#include <sqlite3.h>

#include <keylock/keylock.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#define CHECK(cond) \
    ((cond) ? void() : (std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), std::exit(1)))

namespace {

void exec(sqlite3* db, const char* sql) {
    if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
        throw std::runtime_error(std::string("sqlite: ") + sqlite3_errmsg(db));
    }
}

// [snippet fencing]
// The row keeps the fencing token of the last write it accepted. A write must bring a larger
// one; otherwise a newer holder of the lock has written since, and this writer's lock is stale.
bool write_balance(sqlite3* db, const std::string& account, long long balance, std::uint64_t token) {
    const char* sql = "UPDATE accounts SET balance = ?1, fence = ?2 WHERE id = ?3 AND fence < ?2";
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) != SQLITE_OK) throw std::runtime_error(sqlite3_errmsg(db));
    sqlite3_bind_int64(stmt, 1, balance);
    sqlite3_bind_int64(stmt, 2, static_cast<sqlite3_int64>(token));
    sqlite3_bind_text(stmt, 3, account.c_str(), -1, SQLITE_TRANSIENT);
    const int rc = sqlite3_step(stmt);
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db));
    return sqlite3_changes(db) == 1;  // false: refused, a newer token has written
}
// [/snippet fencing]

long long balance_of(sqlite3* db, const std::string& account) {
    sqlite3_stmt* stmt = nullptr;
    sqlite3_prepare_v2(db, "SELECT balance FROM accounts WHERE id = ?1", -1, &stmt, nullptr);
    sqlite3_bind_text(stmt, 1, account.c_str(), -1, SQLITE_TRANSIENT);
    const long long balance = sqlite3_step(stmt) == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
    sqlite3_finalize(stmt);
    return balance;
}

}  // namespace

int main() {
    sqlite3* db = nullptr;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) return 1;
    try {
        exec(db, "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL, fence INTEGER NOT NULL)");
        exec(db, "INSERT INTO accounts VALUES ('account-7', 100, 0)");
        auto registry = keylock::KeyedLockRegistry::from_url("local://");

        // Holder A locks the account and reads the balance; then it stalls. Its lock is lost
        // meanwhile (here: released, standing in for a lease that ran out).
        keylock::Guard a = registry.lock("account-7");
        const std::uint64_t token_a = a.fencing_token();
        const long long seen_by_a = balance_of(db, "account-7");
        a.release();

        // Holder B gets the lock, with a larger token, and writes.
        keylock::Guard b = registry.lock("account-7");
        CHECK(b.fencing_token() > token_a);
        CHECK(write_balance(db, "account-7", balance_of(db, "account-7") + 50, b.fencing_token()));

        // A wakes up and writes what it computed from its stale read: refused.
        CHECK(!write_balance(db, "account-7", seen_by_a - 30, token_a));
        CHECK(balance_of(db, "account-7") == 150);
        std::puts("fencing: the stale writer was refused, the newer write stands");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fencing: %s\n", e.what());
        sqlite3_close(db);
        return 1;
    }
    sqlite3_close(db);
    return 0;
}
