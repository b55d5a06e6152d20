// SPDX-License-Identifier: BSL-1.0
#include "reclaimer.hpp"

#include <cstddef>
#include <iterator>
#include <new>

namespace keylock::local {

Reclaimer& Reclaimer::get() {
    static auto* instance = new Reclaimer;
    return *instance;
}

void Reclaimer::add(Slot* slot) {
    std::lock_guard lk(mu_);
    slot->next = slots_;
    if (slots_ != nullptr) slots_->prev = slot;
    slots_ = slot;
}

void Reclaimer::remove(Slot* slot) noexcept {
    std::lock_guard lk(mu_);
    (slot->prev ? slot->prev->next : slots_) = slot->next;
    if (slot->next != nullptr) slot->next->prev = slot->prev;
    slot->prev = slot->next = nullptr;
    collect();
}

void Reclaimer::dispose(Entry* e) noexcept {
    std::lock_guard lk(mu_);
    try {
        deferred_.push_back(e);
    } catch (const std::bad_alloc&) {
        if (!hazardous(e)) delete e;
        return;  // else leaked rather than freed under a reader: never happens in practice
    }
    collect();
}

void Reclaimer::drain(void (*drop)(Entry*) noexcept) noexcept {
    for (bool more = true; more;) {
        Entry* batch[64];
        std::size_t n = 0;
        more = false;
        {
            std::lock_guard lk(mu_);
            for (Slot* s = slots_; s != nullptr; s = s->next) {
                if (s->deferred.load(std::memory_order_relaxed) == nullptr) continue;
                if (n == std::size(batch)) {
                    more = true;
                    break;
                }
                if (Entry* e = s->deferred.exchange(nullptr, std::memory_order_seq_cst)) batch[n++] = e;
            }
        }
        for (std::size_t i = 0; i < n; ++i) drop(batch[i]);
    }
}

bool Reclaimer::hazardous(Entry* e) const noexcept {
    for (Slot* s = slots_; s != nullptr; s = s->next) {
        if (s->hazard.load(std::memory_order_acquire) == e) return true;
    }
    return false;
}

void Reclaimer::collect() noexcept {
    std::erase_if(deferred_, [this](Entry* e) {
        if (hazardous(e)) return false;
        delete e;
        return true;
    });
}

}  // namespace keylock::local
