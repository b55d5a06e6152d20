// SPDX-License-Identifier: BSL-1.0
// keylock/keylock.hpp — everything a user of keylock needs, in one include.
//
//   auto registry = keylock::KeyedLockRegistry::from_env();   // KEYLOCK_URL, or local://
//   {
//       keylock::Guard g = registry.lock("client-42");        // waits; unrelated keys don't
//       ...                                                    // only one holder of client-42
//   }                                                          // released here
//
// See README.md and docs/ for the semantics each backend guarantees.
#pragma once

#include <keylock/error.hpp>
#include <keylock/guard.hpp>
#include <keylock/local.hpp>
#include <keylock/multi_guard.hpp>
#include <keylock/options.hpp>
#include <keylock/registry.hpp>
#include <keylock/version.hpp>
