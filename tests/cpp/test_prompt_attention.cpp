// bonsai::parse_prompt_weights (cpp/sdcpp/prompt-attention.cpp) against a reference written from
// the grammar as one std::regex alternation, the way stable-diffusion.cpp parses it, on the
// documented examples and on random short prompts; then prompts long enough to overflow the
// regex parser's stack must parse. Prints "ok N" and exits 0 when every check passes.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "prompt-attention.h"

using Runs = std::vector<std::pair<std::string, float>>;

// The reference: leftmost match of the token alternation, in this order:
// escapes, a lone backslash, "(", "[", ":w)", ")", "]", BREAK, plain text, ":", "B".
static Runs reference(const std::string& prompt) {
    static const std::regex token(
        R"(\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|\]|\bBREAK\b|[^\\()\[\]:B]+|:|\bB)");
    Runs runs;
    std::vector<size_t> round, square;
    auto scale = [&](size_t first, float m) {
        for (size_t r = first; r < runs.size(); ++r) runs[r].second *= m;
    };
    std::smatch m;
    std::string rest = prompt;
    while (std::regex_search(rest, m, token)) {
        const std::string tok = m[0], weight = m[1];
        if (tok == "(") {
            round.push_back(runs.size());
        } else if (tok == "[") {
            square.push_back(runs.size());
        } else if (!weight.empty()) {
            if (!round.empty()) {
                char* end     = nullptr;
                const float w = std::strtof(weight.c_str(), &end);
                if (end != weight.c_str() && std::isfinite(w)) scale(round.back(), w);
                round.pop_back();
            }
        } else if (tok == ")" && !round.empty()) {
            scale(round.back(), 1.1f);
            round.pop_back();
        } else if (tok == "]" && !square.empty()) {
            scale(square.back(), 1 / 1.1f);
            square.pop_back();
        } else if (tok == "\\(") {
            runs.emplace_back("(", 1.0f);
        } else if (tok == "BREAK") {
            runs.emplace_back("BREAK", -1.0f);
        } else {
            runs.emplace_back(tok, 1.0f);
        }
        rest = m.suffix();
    }
    for (size_t p : round) scale(p, 1.1f);
    for (size_t p : square) scale(p, 1 / 1.1f);
    if (runs.empty()) runs.emplace_back("", 1.0f);
    Runs merged;
    for (auto& r : runs) {
        if (!merged.empty() && merged.back().second == r.second) merged.back().first += r.first;
        else merged.push_back(r);
    }
    return merged;
}

static int failures = 0;
static int checks   = 0;

static std::string show(const Runs& runs) {
    std::string s = "[";
    for (const auto& r : runs) s += "('" + r.first + "', " + std::to_string(r.second) + ") ";
    return s + "]";
}

static void expect_runs(const std::string& prompt, const Runs& got, const Runs& want) {
    checks++;
    if (got != want) {
        failures++;
        if (failures <= 10) {
            std::fprintf(stderr, "prompt '%s':\n  got  %s\n  want %s\n", prompt.c_str(), show(got).c_str(),
                         show(want).c_str());
        }
    }
}

static void same_as_reference(const std::string& prompt) {
    expect_runs(prompt, bonsai::parse_prompt_weights(prompt, nullptr), reference(prompt));
}

int main() {
    // The examples documented beside stable-diffusion.cpp's parser.
    expect_runs("normal text", bonsai::parse_prompt_weights("normal text", nullptr), {{"normal text", 1.0f}});
    expect_runs("an (important) word", bonsai::parse_prompt_weights("an (important) word", nullptr),
                {{"an ", 1.0f}, {"important", 1.1f}, {" word", 1.0f}});
    expect_runs("(unbalanced", bonsai::parse_prompt_weights("(unbalanced", nullptr), {{"unbalanced", 1.1f}});
    expect_runs("(unnecessary)(parens)", bonsai::parse_prompt_weights("(unnecessary)(parens)", nullptr),
                {{"unnecessaryparens", 1.1f}});
    const char* fixed[] = {"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                           "\\(literal\\]", "a BREAK b", "aBREAK b", "BREAKfast", "x BREAK", "B", "BB:B",
                           "((((", "))))", "[[[a", "a]]]", "(word:1e309)", "(a:b:c)", "(a:-2.5)", "(a:+.5)",
                           "(a:1.2.3)", "\\\\(x)", "\\", "", ":", "::)", "(:1)", "<lora:x:1>",
                           "caf\xc3\xa9 (cr\xc3\xa8me:1.2) \xff\xfe BREAK_"};
    for (const char* p : fixed) same_as_reference(p);

    // Weights the regex parser threw on (std::stof) close their bracket with no multiplier.
    std::vector<std::string> ignored;
    expect_runs("(a:.)b", bonsai::parse_prompt_weights("(a:.)b", &ignored), {{"ab", 1.0f}});
    const std::string huge = "(a:" + std::string(60, '9') + ")";
    expect_runs(huge, bonsai::parse_prompt_weights(huge, &ignored), {{"a", 1.0f}});
    checks++;
    if (ignored != std::vector<std::string>{".", std::string(60, '9')}) {
        failures++;
        std::fprintf(stderr, "ignored weights: got %zu\n", ignored.size());
    }

    // Random short prompts over the characters that matter.
    const std::string alphabet = "ab ()[]:\\B.10-+REAK_x,";
    std::mt19937 rng(2026);
    for (int n = 0; n < 20000; n++) {
        std::string p;
        const int length = static_cast<int>(rng() % 24);
        for (int k = 0; k < length; k++) p += alphabet[rng() % alphabet.size()];
        if (p.find(":.") != std::string::npos || p.find(":+.") != std::string::npos ||
            p.find(":-.") != std::string::npos) {
            continue;  // weights the reference cannot read either (tested above)
        }
        same_as_reference(p);
    }

    // Long prompts: the regex parser overflowed its stack on ~30 KB of plain text.
    const std::string long_text(1 << 20, 'a');
    expect_runs("1 MB of text", bonsai::parse_prompt_weights(long_text, nullptr), {{long_text, 1.0f}});
    std::string nested = std::string(100000, '(') + "x" + std::string(100000, ')');
    checks++;
    if (bonsai::parse_prompt_weights(nested, nullptr).size() != 1) failures++;

    if (failures) {
        std::fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    std::printf("ok %d\n", checks);
    return 0;
}
