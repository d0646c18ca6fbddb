// Shared helpers for factlens tests: data paths, and (tests/file_util.h) files and temporary
// directories.
#ifndef FACTLENS_TESTS_TESTING_H_
#define FACTLENS_TESTS_TESTING_H_

#include <string>

// ReadFileToString, WriteAll, RemoveTree and ScopedTempDir (the temporary directories of tests).
#include "tests/file_util.h"

namespace factlens::testing {

// Absolute path of a file in the source tree, e.g. SourcePath("models/gpt2-facts-tiny").
inline std::string SourcePath(const std::string& relative) {
  return std::string(FACTLENS_SOURCE_DIR) + "/" + relative;
}

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_TESTING_H_
