#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# The Debian package, as a user gets it: build keylock shared for /usr, `cpack -G DEB`, check
# what the package holds, `apt-get install ./keylock_*.deb`, then build and run the consumer
# (tests/consumer) against the installed package with find_package(... COMPONENTS redis) and
# with pkg-config, run `keylock --version` and find its manual page; finally purge the package.
# Needs root (it installs into /usr). A step of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=$root/build/package
export DEBIAN_FRONTEND=noninteractive

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DCMAKE_INSTALL_PREFIX=/usr \
    -DKEYLOCK_BUILD_TESTS=OFF -DKEYLOCK_BUILD_EXAMPLES=OFF -DKEYLOCK_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j2
rm -f "$build"/keylock_*.deb
(cd "$build" && cpack -G DEB >/dev/null)
deb=$(ls "$build"/keylock_*.deb)
echo "package: $deb"

fail() { echo "package: $*" >&2; exit 1; }
contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/keylock ./usr/include/keylock/keylock.hpp ./usr/include/keylock/version.hpp \
            ./usr/share/man/man1/keylock.1 ./usr/share/doc/keylock/LICENSE \
            /pkgconfig/keylock.pc /pkgconfig/keylock-redis.pc /pkgconfig/keylock-testing.pc /cmake/keylock/keylockConfig.cmake \
            /libkeylock.so.0.1 /libkeylock_redis.so.0.1 /libkeylock_testing.so.0.1 ./usr/include/keylock/testing.hpp; do
    grep -q -- "$path" <<<"$contents" || fail "$deb lacks $path"
done
depends=$(dpkg-deb --field "$deb" Depends)
for dep in libhiredis libssl libsqlite3 libboost-url1.81-dev; do
    grep -q "$dep" <<<"$depends" || fail "Depends lacks $dep: $depends"
done

work=$(mktemp -d)
cleanup() {
    apt-get purge -y -qq keylock >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
apt-get install -y -qq "$deb" >/dev/null
dpkg -s keylock | grep -q "Status: install ok installed" || fail "not installed"

keylock --version | grep -qx "keylock [0-9.]*" || fail "keylock --version: $(keylock --version)"
[ -n "$(man -w keylock 2>/dev/null || find /usr/share/man/man1 -name 'keylock.1*')" ] || fail "no manual page"

# CMake, from the system's own search path (nothing tells it where keylock is).
cmake -S tests/consumer -B "$work/cmake" -DKEYLOCK_CONSUME=find_package >/dev/null
grep -q "^keylock_DIR:PATH=/usr/lib" "$work/cmake/CMakeCache.txt" || fail "find_package did not find /usr's keylock"
cmake --build "$work/cmake" -j2 >/dev/null
"$work/cmake/keylock_consumer"

# pkg-config, likewise.
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Wextra -Wpedantic -Werror -DKEYLOCK_CONSUMER_REDIS tests/consumer/main.cpp \
    -o "$work/pkg-config" $(pkg-config --cflags --libs keylock-redis keylock-testing)
"$work/pkg-config"

apt-get purge -y -qq keylock >/dev/null
dpkg -s keylock >/dev/null 2>&1 && fail "not purged"
echo "package: $deb installs, serves find_package and pkg-config, and is purged cleanly"
