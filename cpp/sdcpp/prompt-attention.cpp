#include "prompt-attention.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace bonsai {

namespace {

constexpr float kRoundMultiplier  = 1.1f;
constexpr float kSquareMultiplier = 1 / 1.1f;

// std::regex's \b in the classic locale: ASCII letters, digits and '_' are word characters.
bool is_word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// Characters that end a run of plain text ('B' may start "BREAK").
bool starts_token(char c) {
    return c == '\\' || c == '(' || c == ')' || c == '[' || c == ']' || c == ':' || c == 'B';
}

bool is_escapable(char c) {
    return c == '(' || c == ')' || c == '[' || c == ']' || c == '\\';
}

// Length of ":<sign?><digits and dots>)" at text[i], or 0.
size_t weight_token_length(const std::string& text, size_t i) {
    size_t j = i + 1;
    if (j < text.size() && (text[j] == '+' || text[j] == '-')) {
        j++;
    }
    const size_t digits = j;
    while (j < text.size() && (text[j] == '.' || (text[j] >= '0' && text[j] <= '9'))) {
        j++;
    }
    if (j == digits || j >= text.size() || text[j] != ')') {
        return 0;
    }
    return j + 1 - i;
}

// The weight as std::stof reads it (the longest numeric prefix), if it is a finite float.
bool parse_weight(const std::string& text, float* weight) {
    errno         = 0;
    char* end     = nullptr;
    const float w = std::strtof(text.c_str(), &end);
    if (end == text.c_str() || errno == ERANGE || !std::isfinite(w)) {
        return false;
    }
    *weight = w;
    return true;
}

}  // namespace

std::vector<std::pair<std::string, float>> parse_prompt_weights(const std::string& text,
                                                                std::vector<std::string>* ignored_weights) {
    std::vector<std::pair<std::string, float>> runs;
    std::vector<size_t> round_brackets;   // index of the first run inside each open "("
    std::vector<size_t> square_brackets;  // and "["

    auto multiply_from = [&runs](size_t first, float multiplier) {
        for (size_t r = first; r < runs.size(); ++r) {
            runs[r].second *= multiplier;
        }
    };
    auto close = [&](std::vector<size_t>& open, float multiplier, const char* literal) {
        if (open.empty()) {
            runs.emplace_back(literal, 1.0f);  // an unmatched closing bracket is text
            return;
        }
        multiply_from(open.back(), multiplier);
        open.pop_back();
    };

    const size_t n = text.size();
    size_t i       = 0;
    while (i < n) {
        const char c = text[i];
        if (c == '\\') {
            if (i + 1 < n && is_escapable(text[i + 1])) {
                // Only "\(" loses its backslash; "\)", "\[", "\]" and "\\" stay as written.
                runs.emplace_back(text[i + 1] == '(' ? std::string("(") : text.substr(i, 2), 1.0f);
                i += 2;
            } else {
                runs.emplace_back("\\", 1.0f);
                i += 1;
            }
        } else if (c == '(') {
            round_brackets.push_back(runs.size());
            i += 1;
        } else if (c == '[') {
            square_brackets.push_back(runs.size());
            i += 1;
        } else if (c == ')') {
            close(round_brackets, kRoundMultiplier, ")");
            i += 1;
        } else if (c == ']') {
            close(square_brackets, kSquareMultiplier, "]");
            i += 1;
        } else if (c == ':') {
            const size_t length = weight_token_length(text, i);
            if (length == 0) {
                runs.emplace_back(":", 1.0f);
                i += 1;
                continue;
            }
            // ":w)" closes the innermost "(" with weight w; without an open "(" it is dropped.
            if (!round_brackets.empty()) {
                const std::string weight_text = text.substr(i + 1, length - 2);
                float weight                  = 1.0f;
                if (parse_weight(weight_text, &weight)) {
                    multiply_from(round_brackets.back(), weight);
                } else if (ignored_weights != nullptr) {
                    ignored_weights->push_back(weight_text);
                }
                round_brackets.pop_back();
            }
            i += length;
        } else if (c == 'B') {
            if (text.compare(i, 5, "BREAK") == 0 && (i + 5 == n || !is_word_char(text[i + 5]))) {
                runs.emplace_back("BREAK", -1.0f);
                i += 5;
            } else {
                runs.emplace_back("B", 1.0f);
                i += 1;
            }
        } else {
            size_t end = i + 1;
            while (end < n && !starts_token(text[end])) {
                end++;
            }
            runs.emplace_back(text.substr(i, end - i), 1.0f);
            i = end;
        }
    }

    // Brackets left open apply to everything after them.
    for (size_t first : round_brackets) {
        multiply_from(first, kRoundMultiplier);
    }
    for (size_t first : square_brackets) {
        multiply_from(first, kSquareMultiplier);
    }
    if (runs.empty()) {
        runs.emplace_back("", 1.0f);
    }

    std::vector<std::pair<std::string, float>> merged;
    for (auto& run : runs) {
        if (!merged.empty() && merged.back().second == run.second) {
            merged.back().first += run.first;
        } else {
            merged.push_back(std::move(run));
        }
    }
    return merged;
}

}  // namespace bonsai
