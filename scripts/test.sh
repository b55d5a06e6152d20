#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Quick start, command 2: install what is missing, check the sources (scripts/lint.sh:
# clang-format and clang-tidy), then build and run the whole test suite in the release build,
# build the Debian package and test it installed (scripts/package.sh), run the suite in the
# asan+ubsan and tsan builds (CMakePresets.json), then the fuzz targets for
# $KEYLOCK_FUZZ_SECONDS (default 60) each (scripts/fuzz.sh). Pass step names to run fewer
# (`lint`, `release`, `package`, `asan`, `tsan`, `fuzz`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(lint release package asan tsan fuzz)
for preset in "${presets[@]}"; do
    echo "== keylock: ${preset} build =="
    if [ "$preset" = lint ]; then
        # clang-format and clang-tidy over the release build's compile commands (no build needed).
        cmake --preset release >/dev/null
        bash scripts/lint.sh build/release
        continue
    fi
    if [ "$preset" = package ]; then
        bash scripts/package.sh  # the .deb: built, installed with apt-get, used, removed
        continue
    fi
    if [ "$preset" = fuzz ]; then
        bash scripts/fuzz.sh "${KEYLOCK_FUZZ_SECONDS:-60}"
        continue
    fi
    cmake --preset "$preset" >/dev/null
    cmake --build --preset "$preset"
    ctest --preset "$preset"
done
