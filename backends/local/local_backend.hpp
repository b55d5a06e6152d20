// SPDX-License-Identifier: BSL-1.0
// The in-process backend: a sharded table of reference-counted per-key entries, each with its
// own FIFO queue of waiters. An entry lives exactly as long as something refers to it (its
// holder, a waiter, a KeyMutex pin), plus `idle_ttl` if configured.
#pragma once

#include <memory>

#include <keylock/detail/backend.hpp>
#include <keylock/export.hpp>
#include <keylock/local.hpp>

namespace keylock::local {

/// Makes a local backend; throws keylock::Error (`invalid_option`) for bad options. Exported
/// for keylock::testing, whose simulated store is a local backend (not part of the API).
KEYLOCK_API std::shared_ptr<detail::Backend> make_backend(const LocalOptions& options);

}  // namespace keylock::local
