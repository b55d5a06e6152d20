// SPDX-License-Identifier: BSL-1.0
// keylock/export.hpp — KEYLOCK_API marks what keylock's libraries export.
//
// keylock's libraries are built with hidden visibility (-fvisibility=hidden
// -fvisibility-inlines-hidden): a shared libkeylock or libkeylock_redis exports the public API
// declared with KEYLOCK_API and nothing else, so the installed package proves that users need
// nothing more. (A few detail:: functions carry it too: keylock's own libraries and tools share
// them, and inline code in the public headers calls them. They are not API.)
#pragma once

#define KEYLOCK_API __attribute__((visibility("default")))
