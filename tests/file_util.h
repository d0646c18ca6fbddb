// Test helpers shared by the GoogleTest suites (also those without FACTLENS_SOURCE_DIR, and those
// that do not link libtorch: nothing here may need it): reading and writing whole files, and
// temporary directories that are removed in every outcome of the test that owns them.
#ifndef FACTLENS_TESTS_FILE_UTIL_H_
#define FACTLENS_TESTS_FILE_UTIL_H_

#include <ftw.h>
#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

namespace factlens::testing {

// The whole contents of the file at `path`, bytes as they are; empty if it cannot be read (the
// test's assertions on the contents then fail).
inline std::string ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Writes `bytes` to the file at `path`, replacing it; false if it cannot be written completely.
inline bool WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  out.close();
  return static_cast<bool>(out);
}

// Removes a directory tree, not following symbolic links. (Not std::filesystem::remove_all: in
// binaries that link libtorch the call binds to libtorch's own copy, built against another
// libstdc++, and crashes.)
inline void RemoveTree(const std::string& path) {
  nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

// A fresh, empty directory under $TMPDIR (or /tmp), removed with its contents when the object goes
// away: in every outcome of the test that owns it (pass, failed assertion, exception). The only
// way tests make temporary directories, so that none is left behind (scripts/test.sh checks that
// the suite leaves its $TMPDIR empty). Aborts the test binary if the directory cannot be made.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/factlens-test-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::perror(("ScopedTempDir: mkdtemp " + pattern).c_str());
      std::abort();
    }
    path_ = std::move(pattern);
  }
  ~ScopedTempDir() {
    if (!path_.empty()) RemoveTree(path_);
  }
  ScopedTempDir(ScopedTempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  ScopedTempDir& operator=(ScopedTempDir&& other) noexcept {
    if (this != &other) {
      if (!path_.empty()) RemoveTree(path_);
      path_ = std::exchange(other.path_, {});
    }
    return *this;
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_FILE_UTIL_H_
