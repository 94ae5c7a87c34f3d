// stable-diffusion.cpp's prompt weighting syntax, "(word)", "(word:1.3)", "[word]", "BREAK",
// "\(" ..., parsed by a scanner instead of std::regex: libstdc++'s regex executor recurses once
// per character of a run of plain text, so a prompt of some 30 KB overflowed the stack
// (SIGSEGV). The result is the one the regex parser gives, token for token.
#ifndef BONSAI_SDCPP_PROMPT_ATTENTION_H
#define BONSAI_SDCPP_PROMPT_ATTENTION_H

#include <string>
#include <utility>
#include <vector>

namespace bonsai {

// (text, weight) runs of `text`; adjacent runs of equal weight are merged, and "BREAK" is the
// run ("BREAK", -1). A "(text:w)" whose w is not a finite float (":.)", 40 digits) closes its
// bracket with no multiplier, and w is appended to `ignored_weights` when that is given (the
// regex parser threw std::invalid_argument / std::out_of_range there).
std::vector<std::pair<std::string, float>> parse_prompt_weights(const std::string& text,
                                                                std::vector<std::string>* ignored_weights);

}  // namespace bonsai

#endif  // BONSAI_SDCPP_PROMPT_ATTENTION_H
