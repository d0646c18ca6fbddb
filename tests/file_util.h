// Test helper shared by the GoogleTest suites (also those without FACTLENS_SOURCE_DIR).
#ifndef FACTLENS_TESTS_FILE_UTIL_H_
#define FACTLENS_TESTS_FILE_UTIL_H_

#include <fstream>
#include <sstream>
#include <string>

namespace factlens::testing {

// The whole contents of the file at `path`, bytes as they are; empty if it cannot be read (the
// test's assertions on the contents then fail).
inline std::string ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_FILE_UTIL_H_
