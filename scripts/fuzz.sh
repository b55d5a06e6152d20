#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# scripts/fuzz.sh [SECONDS] — builds the libFuzzer targets (the `fuzz` preset: Clang 14,
# AddressSanitizer + UndefinedBehaviorSanitizer) and runs each for SECONDS (default 60) over a
# copy of its seed corpus (fuzz/corpus/TARGET, copied to a temporary directory: the repository
# is never written to), with its dictionary (fuzz/dict/). docs/contributing.md, "Fuzzing".
#
# Exits 1 if a target found a crash (a property violated, a sanitizer report, a leak, an input
# slower than 5 s or one using more than 2 GB), printing the report, the reproducer (kept under
# build/fuzz/artifacts/, or $KEYLOCK_FUZZ_ARTIFACTS) and the command that reruns it.
set -euo pipefail

seconds=${1:-60}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS]   (per target; default 60)" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz

artifacts=${KEYLOCK_FUZZ_ARTIFACTS:-$root/build/fuzz/artifacts}
work=$(mktemp -d "${TMPDIR:-/tmp}/keylock-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

# target:corpus:dictionary
targets=(fuzz_url:url:url.dict fuzz_reply:reply:resp.dict)
final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
status=0
for entry in "${targets[@]}"; do
    IFS=: read -r target corpus dict <<<"$entry"
    binary=$root/build/fuzz/fuzz/$target
    mkdir -p "$work/$corpus" "$artifacts/$target"
    cp "$root/fuzz/corpus/$corpus"/* "$work/$corpus/"
    seeds=$(find "$work/$corpus" -type f | wc -l)
    echo "== keylock: $target, ${seconds}s over $seeds seeds (fuzz/corpus/$corpus) =="
    log=$work/$target.log
    rc=0
    TMPDIR=$work "$binary" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -dict="$root/fuzz/dict/$dict" \
        -artifact_prefix="$artifacts/$target/" -print_final_stats=1 "$work/$corpus" >"$log" 2>&1 || rc=$?
    runs=$(final_stat number_of_executed_units)
    rate=$(final_stat average_exec_per_sec)
    if [ "$rc" -eq 0 ]; then
        echo "$target: ${runs:-?} runs, ${rate:-?}/s, corpus $seeds -> $(find "$work/$corpus" -type f | wc -l) inputs," \
             "peak RSS $(final_stat peak_rss_mb) MB: no crash"
        continue
    fi
    status=1
    cp "$log" "$artifacts/$target/$target.log"
    echo "$target: FAILED (exit $rc) after ${runs:-?} runs; the end of its log" \
         "(all of it: $artifacts/$target/$target.log):" >&2
    grep -v -E '^(#[0-9]+|INFO:|")' "$log" | tail -60 >&2
    reproducers=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log")
    if [ -n "$reproducers" ]; then
        for r in $reproducers; do
            echo "$target: reproducer: $r" >&2
            echo "$target: rerun it with: cmake --preset fuzz && cmake --build --preset fuzz &&" \
                 "$binary $r" >&2
        done
    else
        echo "$target: no reproducer written" >&2
    fi
done
exit $status
