// SPDX-License-Identifier: BSL-1.0
// The local backend's URL: `local://?option=value&...` (internal).
#pragma once

#include <string_view>

#include <keylock/local.hpp>

namespace keylock::local {

/// The options of a `local://` URL; throws keylock::Error naming the part at fault.
LocalOptions parse_url(std::string_view text);

}  // namespace keylock::local
