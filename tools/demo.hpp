// SPDX-License-Identifier: BSL-1.0
// tools/demo.hpp — `keylock demo`: the get-or-create race keylock prevents, shown with real
// processes and threads against one SQLite table.
#pragma once

namespace keylock::cli {

/// Runs the demo. `argv[0]` is the name to show in messages (e.g. "keylock demo"); `argv[1..]`
/// are the demo's options (`--help` lists them). Returns the process exit status: 0 done, 1 a
/// failure (or duplicates a lock should have prevented), 64 usage error, 69 backend unreachable,
/// 78 bad backend URL.
int demo_main(int argc, char** argv);

}  // namespace keylock::cli
