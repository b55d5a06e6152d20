#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# scripts/lint.sh BUILD_DIR — the format and static-analysis checks CI runs (docs/contributing.md).
#
#   1. clang-format-14 --dry-run --Werror on every tracked *.cpp and *.hpp (.clang-format), minus
#      format_exclude below;
#   2. clang-tidy-14 (.clang-tidy) on every project source in BUILD_DIR/compile_commands.json,
#      LINT_JOBS (default 2) at a time, skipping generated files and fuzz/.
#
# BUILD_DIR is a configured build with CMAKE_EXPORT_COMPILE_COMMANDS=ON, e.g. `cmake --preset
# release` then `scripts/lint.sh build/release`. It need not be built: no generated headers.
# Prints every finding; exits 1 if there is any. CLANG_FORMAT and CLANG_TIDY override the tools.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: scripts/lint.sh BUILD_DIR" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
clang_format=${CLANG_FORMAT:-clang-format-14}
clang_tidy=${CLANG_TIDY:-clang-tidy-14}
jobs=${LINT_JOBS:-2}

# Not checked by clang-format (path prefixes, relative to the repository root):
format_exclude=(
    # The docs' C++ samples are regions of these files, compared line for line by
    # tests/check_snippets.cpp: their layout (comments aligned across a whole sample, calls
    # wrapped where a reader expects) is written for the docs, which clang-format would undo.
    examples/
)

for tool in "$clang_format" "$clang_tidy"; do
    command -v "$tool" >/dev/null || { echo "lint: $tool not found (scripts/install-deps.sh installs it)" >&2; exit 2; }
done
[ -f "$build/compile_commands.json" ] ||
    { echo "lint: no $build/compile_commands.json; configure with CMAKE_EXPORT_COMPILE_COMMANDS=ON" >&2; exit 2; }

status=0
start=$SECONDS

# -- clang-format ---------------------------------------------------------------------------
cd "$root"
format_files=()
while IFS= read -r f; do
    for prefix in "${format_exclude[@]}"; do
        [[ "$f" == "$prefix"* ]] && continue 2
    done
    format_files+=("$f")
done < <(git ls-files '*.cpp' '*.hpp')
echo "lint: clang-format: ${#format_files[@]} files"
if ! "$clang_format" --dry-run --Werror "${format_files[@]}"; then
    echo "lint: clang-format: the files above differ from .clang-format; fix them with" >&2
    echo "      $clang_format -i FILE..." >&2
    status=1
fi

# -- clang-tidy -----------------------------------------------------------------------------
# The project's own translation units: under the source tree, not under the build directory
# (generated), not fuzz targets; each once (anchor.cpp is compiled into several targets).
mapfile -t tidy_files < <(python3 - "$build/compile_commands.json" "$root" "$build" <<'EOF'
import json, os, sys
db, root, build = sys.argv[1], os.path.realpath(sys.argv[2]), os.path.realpath(sys.argv[3])
seen = []
for entry in json.load(open(db)):
    path = os.path.realpath(os.path.join(entry["directory"], entry["file"]))
    rel = os.path.relpath(path, root)
    if rel.startswith("..") or path.startswith(build + os.sep) or "fuzz" in rel.split(os.sep)[:-1]:
        continue
    if path not in seen:
        seen.append(path)
print("\n".join(seen))
EOF
)
echo "lint: clang-tidy: ${#tidy_files[@]} translation units, $jobs at a time"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# --extra-arg-before=-std=gnu++17: GCC 12's default, for targets that set no standard (clang's
# is older); any -std of the target comes later and wins.
# --extra-arg=-Wno-unknown-warning-option: the commands are GCC's, which has warnings clang
# lacks (-Wno-tsan in the tsan preset).
export clang_tidy build out
printf '%s\n' "${tidy_files[@]}" | xargs -P "$jobs" -I{} sh -c '
    log="$out/$(echo "$1" | tr / _).log"
    if ! "$clang_tidy" -p "$build" --quiet --extra-arg-before=-std=gnu++17 \
            --extra-arg=-Wno-unknown-warning-option "$1" >"$log" 2>&1; then
        mv "$log" "$log.failed"
    fi' sh {} || true
failed=$(find "$out" -name '*.failed' | sort)
if [ -n "$failed" ]; then
    for log in $failed; do
        cat "$log"
    done
    echo
    echo "lint: clang-tidy findings (each once; headers may be reported from several files):" >&2
    cat $failed | grep -E '^[^ ]+:[0-9]+:[0-9]+: (warning|error):' | sort -u >&2 || true
    status=1
fi

echo "lint: $([ $status -eq 0 ] && echo clean || echo FAILED) in $((SECONDS - start)) s"
exit $status
