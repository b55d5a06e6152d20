#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Quick start, command 1: install what is missing, build the keylock command, and run its
# get-or-create demo twice: without a lock, then on the embedded local backend (no server
# needed). Extra arguments go to both runs (`keylock demo --help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target keylock_cli >/dev/null
./build/release/keylock demo --backend none "$@"
echo
exec ./build/release/keylock demo --backend local:// "$@"
