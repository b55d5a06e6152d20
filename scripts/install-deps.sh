#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Installs the Debian bookworm packages keylock needs to build, test and run its demo.
# Idempotent: does nothing when everything is there. Needs root (or sudo).
# Usage: scripts/install-deps.sh [demo|all]
set -euo pipefail

# What to install: `demo` (building the libraries and the keylock command, and running its
# demo: the Quick start's first command) or `all` (the default: also the tests' servers and
# tools, the linters and the fuzzers' compiler).
profile=${1:-all}
case "$profile" in
    demo|all) ;;
    *) echo "usage: scripts/install-deps.sh [demo|all]" >&2; exit 64 ;;
esac

packages=(
    build-essential cmake pkg-config
    libboost1.81-dev libboost-url1.81-dev   # Asio (headers) and Boost.URL
    libhiredis-dev libssl-dev               # the Redis backend: RESP encoder/parser, TLS
    libsqlite3-dev                          # the get-or-create demo
    libboost-program-options1.81-dev        # the keylock command's options
)
if [ "$profile" = all ]; then
    packages+=(
        openssl                                 # tests: throwaway certificates for Redis over TLS
        catch2                                  # tests
        redis-server                            # tests of the Redis backend start their own server
        iptables iproute2                       # fault tests: the network cut inside a network namespace
        clang-format-14 clang-tidy-14 python3   # scripts/lint.sh (python3 reads compile_commands.json)
        clang-14 libclang-rt-14-dev             # scripts/fuzz.sh: libFuzzer and the sanitizers' runtimes
        doxygen                                 # the API reference (the docs target, test docs.api_reference)
    )
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "keylock: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
