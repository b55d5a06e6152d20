#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run the get-or-create demo on the
# embedded local backend (no server needed). Extra arguments go to the demo (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target get_or_create_demo >/dev/null
exec ./build/release/examples/get_or_create_demo "$@"
