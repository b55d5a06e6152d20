// SPDX-License-Identifier: BSL-1.0
// Compiled into every target that links keylock::redis (an INTERFACE source of that target).
// It refers to the object that registers the redis://, rediss:// and unix:// schemes with
// KeyedLockRegistry::from_url, so that the linker keeps that object (static library) or the
// shared library it is in (which --as-needed would otherwise drop: nothing else calls it).
extern "C" const bool keylock_redis_registered;

namespace {
[[gnu::used]] const bool* const keylock_redis_anchor = &keylock_redis_registered;
}  // namespace
