// SPDX-License-Identifier: BSL-1.0
// The Redis backend: distributed per-key locks on a Redis server (`redis://`, `rediss://`,
// `unix://`). See docs/design.md, "The Redis backend".
#pragma once

#include <memory>
#include <string_view>

#include <keylock/detail/backend.hpp>

#include "redis_config.hpp"

namespace keylock::redis {

/// A backend for `config`. The shared_ptr's deleter closes it; it frees itself once its last
/// guard and wait are gone.
std::shared_ptr<detail::Backend> make_backend(const RedisConfig& config);

}  // namespace keylock::redis
