// Human-readable text rendering of a fact-localization report, with tokens decoded as a
// person reads them.
#ifndef FACTLENS_ANALYSIS_REPORT_FORMAT_H_
#define FACTLENS_ANALYSIS_REPORT_FORMAT_H_

#include <string>

#include "analysis/locate.h"
#include "analysis/tokenizer/tokenizer.h"

namespace factlens {

// A multi-section plain-text report (prediction, layers, heads, neurons, query layers, ablation).
std::string FormatFactReport(const FactReport& report, const Tokenizer& tokenizer);

// A token as shown in reports: the tokenizer's display form, or "<id N>" if it has none.
std::string ShowToken(const Tokenizer& tokenizer, int64_t id);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_REPORT_FORMAT_H_
