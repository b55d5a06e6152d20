#!/usr/bin/env bash
# Quick start, command 2: install what is missing, then build and run the whole test suite in
# the release, asan+ubsan and tsan builds (CMakePresets.json). Pass preset names to run fewer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(release asan tsan)
for preset in "${presets[@]}"; do
    echo "== keylock: ${preset} build =="
    cmake --preset "$preset" >/dev/null
    cmake --build --preset "$preset"
    ctest --preset "$preset"
done
