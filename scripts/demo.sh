#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Quick start, command 1: install what is missing (packages to build and run, not to test),
# build the keylock command (the `lib` preset: no tests, examples or benchmarks), and run its
# get-or-create demo twice: without a lock, then on the embedded local backend (no server
# needed). Extra arguments go to both runs (`keylock demo --help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh demo   # what building and running need; not the tests' tools
cmake --preset lib >/dev/null          # the libraries and the command only (CMakePresets.json)
cmake --build --preset lib --target keylock_cli >/dev/null
./build/lib/keylock demo --backend none "$@"
echo
exec ./build/lib/keylock demo --backend local:// "$@"
