// SPDX-License-Identifier: BSL-1.0
// tenant_limit — at most N jobs of one tenant at once, with a keyed semaphore:
// acquire_permits(tenant, 1, N) takes one of the tenant's N permits, and the guard gives it back.
//
// Eight workers run a queue of jobs for three tenants, each tenant with its own limit. Every
// tenant's jobs run at most its limit at a time, whatever the workers do, and a busy tenant does
// not hold back the others (each tenant is its own key). The region between the snippet markers
// is the sample of docs/modes.md. Usage: tenant_limit [URL] (default local://); exits with 1 if
// a check fails.
#include <keylock/keylock.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#define CHECK(cond) \
    ((cond) ? void() : (std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond), std::exit(1)))

using namespace std::chrono_literals;

namespace {

// Each tenant's limit. Every caller for one tenant must give the same limit: a request with
// another limit fails with errc::mode_conflict rather than mixing two semaphores.
const std::map<std::string, std::uint32_t> limits = {{"tenant-a", 2}, {"tenant-b", 3}, {"tenant-c", 1}};

struct Tenant {
    std::atomic<int> running{0}, max_running{0}, done{0};
};
std::map<std::string, Tenant> tenants;  // filled before the workers start; read-only keys after

void run_job(const std::string& tenant) {
    Tenant& t = tenants.at(tenant);
    const int now = ++t.running;
    int seen = t.max_running.load();
    while (now > seen && !t.max_running.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(1ms);  // the job's work
    --t.running;
    ++t.done;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string url = argc > 1 ? argv[1] : "local://";
    try {
        auto registry = keylock::KeyedLockRegistry::from_url(url);
        // The limit is part of the semaphore: while tenant-a's permits are in use, a caller
        // that names another limit is refused; one that names the same waits or gives up.
        {
            keylock::Guard one = registry.acquire_permits("tenant-a", 1, 2);
            keylock::Guard two = registry.acquire_permits("tenant-a", 1, 2);
            CHECK(!registry.try_acquire_permits_for("tenant-a", 1, 2, 10ms));  // both in use
            bool refused = false;
            try {
                (void)registry.try_acquire_permits("tenant-a", 1, 5);
            } catch (const keylock::Error& e) {
                refused = e.code() == keylock::errc::mode_conflict;
            }
            CHECK(refused);
        }  // both permits go back

        std::vector<std::string> jobs;  // 140 jobs; tenant-a has most: the busy tenant
        for (int i = 0; i < 40; ++i) jobs.insert(jobs.end(), {"tenant-a", "tenant-a", "tenant-b"});
        for (int i = 0; i < 20; ++i) jobs.emplace_back("tenant-c");
        for (const auto& [name, limit] : limits) tenants[name];

        std::atomic<std::size_t> next{0};
        std::vector<std::thread> workers;
        for (int w = 0; w < 8; ++w) {
            workers.emplace_back([&] {
                for (std::size_t i = next++; i < jobs.size(); i = next++) {
                    const std::string& tenant = jobs[i];
                    // [snippet permit]
                    const std::uint32_t limit = limits.at(tenant);
                    keylock::Guard permit = registry.acquire_permits(tenant, 1, limit);  // waits for a free one
                    run_job(tenant);  // at most `limit` of this tenant's jobs run here at once
                    // [/snippet permit]
                }  // the permit goes back here, and the tenant's next waiting job gets it
            });
        }
        for (auto& w : workers) w.join();

        for (const auto& [name, limit] : limits) {
            const Tenant& t = tenants.at(name);
            std::printf("%s: %d jobs, at most %d at once (limit %u)\n", name.c_str(), t.done.load(),
                        t.max_running.load(), limit);
            CHECK(t.max_running.load() >= 1 && t.max_running.load() <= static_cast<int>(limit));
            CHECK(t.done == static_cast<int>(std::count(jobs.begin(), jobs.end(), name)));  // every job ran
        }
        std::printf("tenant_limit: %zu jobs on %s; all checks passed\n", jobs.size(), url.c_str());
    } catch (const keylock::Error& e) {  // e.g. not_supported: the backend has no permits yet
        std::fprintf(stderr, "tenant_limit: %s\n", e.what());
        return 1;
    }
}
