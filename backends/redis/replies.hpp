// SPDX-License-Identifier: BSL-1.0
// What the Redis backend's scripts answer (scripts.hpp), read into what the backend acts on.
#pragma once

#include <string>
#include <system_error>

#include <keylock/options.hpp>

#include "connection.hpp"
#include "key_lock.hpp"

namespace keylock::redis {

/// The owner token of a lock value (`<fencing token>:<owner token>`), a modal hold's member
/// (`<mode>:<fencing token>:<owner token>`) or an owner token alone: what follows its last ':'.
std::string owner_of(const std::string& token);

/// The words of a server's error reply `r` for a message: as they are when they already name
/// the node (a quorum's or a cluster's error), else "Redis answered '…'".
std::string error_reason(const Reply& r);

/// The error a server's error reply `r` stands for: `auth_failed` for a refusal by an ACL
/// (NOPERM), `mode_conflict` and `invalid_argument` for the mode scripts' KEYLOCK_MODE and
/// KEYLOCK_LIMIT, KEYLOCK_PERMITS and KEYLOCK_CONVERT, else `backend_error`.
std::error_code error_code_of(const Reply& r);

/// The answer to the acquire script (`acquire` or `acquire_plain`), or its absence (`ec`; `r.str`
/// then says why).
AttemptOutcome acquire_outcome_of(std::error_code ec, const Reply& r);

/// The answer to the inspect script: the lock and, when its value is ours in form
/// (`<fencing token>:<owner token>`), its fencing token. `ec`: `backend_error` for an answer
/// that is not the script's.
LockInfo lock_info_of(const Reply& r, std::error_code& ec);

/// The answer to the inspect_modes script (mode_scripts.hpp): any mode. `ec`: `backend_error`
/// for a key that is not keylock's (its type in `why`) or an answer that is not the script's.
LockInfo lock_info_of_modes(const Reply& r, std::error_code& ec, std::string& why);

}  // namespace keylock::redis
