// Shared helpers for factlens tests: data paths and tensor comparison.
#ifndef FACTLENS_TESTS_TESTING_H_
#define FACTLENS_TESTS_TESTING_H_

#include <cstdlib>
#include <string>

namespace factlens::testing {

// Absolute path of a file in the source tree, e.g. SourcePath("models/gpt2-facts-tiny").
inline std::string SourcePath(const std::string& relative) {
  return std::string(FACTLENS_SOURCE_DIR) + "/" + relative;
}

// A fresh, empty directory under $TMPDIR (or /tmp). Tests leave it behind for inspection.
inline std::string MakeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/factlens-test-XXXXXX";
  return mkdtemp(pattern.data()) != nullptr ? pattern : std::string();
}

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_TESTING_H_
