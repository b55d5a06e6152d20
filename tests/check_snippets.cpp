// SPDX-License-Identifier: BSL-1.0
// check_snippets SOURCE_DIR — keeps the docs' C++ samples true to code that is compiled and run.
//
// Every ```cpp block in README.md and docs/*.md must follow a marker line
//
//     <!-- snippet: examples/tutorial.cpp#name -->
//
// and equal, line for line, the region of that file between `// [snippet name]` and
// `// [/snippet name]` (without the region's common indentation). The examples are built and
// run by CTest, so a sample that stops compiling or working fails the suite, and so does a
// sample edited in the docs alone. Exit status 1 lists every mismatch.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::vector<std::string> read_lines(const fs::path& file) {
    std::ifstream in(file);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

/// The region `name` of `file`, without its common indentation; nullopt if it has none.
std::optional<std::vector<std::string>> region(const fs::path& file, const std::string& name) {
    const auto lines = read_lines(file);
    const std::string open = "// [snippet " + name + "]", close = "// [/snippet " + name + "]";
    auto begin = std::find_if(lines.begin(), lines.end(), [&](const std::string& l) { return trim(l) == open; });
    if (begin == lines.end()) return std::nullopt;
    auto end = std::find_if(begin + 1, lines.end(), [&](const std::string& l) { return trim(l) == close; });
    if (end == lines.end()) return std::nullopt;
    std::vector<std::string> out(begin + 1, end);
    std::size_t indent = std::string::npos;
    for (const auto& l : out) {
        if (!trim(l).empty()) indent = std::min(indent, l.find_first_not_of(' '));
    }
    for (auto& l : out) l = trim(l).empty() ? "" : l.substr(indent == std::string::npos ? 0 : indent);
    return out;
}

int check(const fs::path& root, const fs::path& doc) {
    int problems = 0;
    const auto lines = read_lines(doc);
    const std::string where = fs::relative(doc, root).string();
    const std::string marker = "<!-- snippet: ";
    for (std::size_t i = 0; i < lines.size(); ++i) {
        if (lines[i] != "```cpp") continue;
        const auto report = [&](const std::string& what) {
            std::cerr << where << ":" << i + 1 << ": " << what << "\n";
            ++problems;
        };
        std::size_t end = i + 1;
        while (end < lines.size() && lines[end] != "```") ++end;
        const std::vector<std::string> sample(lines.begin() + static_cast<long>(i) + 1,
                                              lines.begin() + static_cast<long>(end));
        const std::string prev = i > 0 ? trim(lines[i - 1]) : "";
        if (prev.rfind(marker, 0) != 0 || prev.size() < marker.size() + 4 || prev.substr(prev.size() - 4) != " -->") {
            report("a C++ sample without a '<!-- snippet: FILE#NAME -->' line before it");
            i = end;
            continue;
        }
        const std::string ref = prev.substr(marker.size(), prev.size() - marker.size() - 4);
        const auto hash = ref.find('#');
        if (hash == std::string::npos) {
            report("snippet reference '" + ref + "' is not FILE#NAME");
            i = end;
            continue;
        }
        const auto code = region(root / ref.substr(0, hash), ref.substr(hash + 1));
        if (!code) {
            report("no region '" + ref.substr(hash + 1) + "' in " + ref.substr(0, hash));
        } else if (*code != sample) {
            std::size_t k = 0;
            while (k < code->size() && k < sample.size() && (*code)[k] == sample[k]) ++k;
            report("the sample differs from " + ref + " at its line " + std::to_string(k + 1) +
                   ":\n  doc:  " + (k < sample.size() ? sample[k] : "(end)") +
                   "\n  code: " + (k < code->size() ? (*code)[k] : "(end)"));
        }
        i = end;
    }
    return problems;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: check_snippets SOURCE_DIR\n";
        return 64;
    }
    const fs::path root = argv[1];
    std::vector<fs::path> docs{root / "README.md"};
    for (const auto& e : fs::directory_iterator(root / "docs")) {
        if (e.path().extension() == ".md") docs.push_back(e.path());
    }
    std::sort(docs.begin(), docs.end());
    int problems = 0, samples = 0;
    for (const auto& doc : docs) {
        problems += check(root, doc);
        for (const auto& l : read_lines(doc)) samples += l == "```cpp";
    }
    if (problems > 0) {
        std::cerr << problems << " C++ sample(s) out of step with the code (see tests/check_snippets.cpp)\n";
        return 1;
    }
    std::cout << samples << " C++ samples in the docs match the compiled examples\n";
    return 0;
}
