#!/usr/bin/env bash
# Quick start, command 2: install what is missing, then build and run the whole test suite in
# the release, asan+ubsan and tsan builds (CMakePresets.json), then the fuzz targets for
# $KEYLOCK_FUZZ_SECONDS (default 60) each (scripts/fuzz.sh). Pass preset names to run fewer
# (`fuzz` for the fuzz targets alone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(release asan tsan fuzz)
for preset in "${presets[@]}"; do
    echo "== keylock: ${preset} build =="
    if [ "$preset" = fuzz ]; then
        bash scripts/fuzz.sh "${KEYLOCK_FUZZ_SECONDS:-60}"
        continue
    fi
    cmake --preset "$preset" >/dev/null
    cmake --build --preset "$preset"
    ctest --preset "$preset"
done
