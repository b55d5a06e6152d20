// SPDX-License-Identifier: BSL-1.0
// Compiled into every target that links keylock::keylock (an INTERFACE source of that target).
// It refers to the object that registers the local:// scheme with
// KeyedLockRegistry::from_url, so that the linker keeps that object (static library) or the
// shared library it is in (which --as-needed would otherwise drop: nothing else calls it).
extern "C" const bool keylock_local_registered;

namespace {
[[gnu::used]] const bool* const keylock_local_anchor = &keylock_local_registered;
}  // namespace
