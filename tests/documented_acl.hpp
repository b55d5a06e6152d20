// SPDX-License-Identifier: BSL-1.0
// The minimum Redis ACL that docs/configuration.md documents, read from the doc itself, so that
// the tests run the very line users copy.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace keylock::test {

/// The `ACL SETUSER keylock-app …` line of docs/configuration.md, as arguments, with the
/// password `pw`, minus the arguments in `without` and with those in `with` added.
inline std::vector<std::string> documented_acl(const std::vector<std::string>& without = {},
                                               const std::vector<std::string>& with = {}) {
    std::ifstream in(KEYLOCK_SOURCE_DIR "/docs/configuration.md");
    std::string line;
    while (std::getline(in, line) && !line.starts_with("ACL SETUSER keylock-app ")) {
    }
    REQUIRE(line.starts_with("ACL SETUSER keylock-app "));
    std::vector<std::string> args;
    std::istringstream words(line);
    for (std::string w; words >> w;) {
        if (w == ">PASSWORD") w = ">pw";
        if (std::find(without.begin(), without.end(), w) == without.end()) args.push_back(w);
    }
    args.insert(args.end(), with.begin(), with.end());
    return args;
}

}  // namespace keylock::test
