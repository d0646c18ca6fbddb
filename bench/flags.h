// Command-line flags of the bench tools, written "--flag VALUE" or "--flag=VALUE".
#ifndef FACTLENS_BENCH_FLAGS_H_
#define FACTLENS_BENCH_FLAGS_H_

#include <cstring>

namespace factlens {

// Walks argv one argument at a time: `for (FlagReader flags(argc, argv); flags.Next();)`. argv
// must outlive it; not thread-safe.
class FlagReader {
 public:
  FlagReader(int argc, char** argv) : argc_(argc), argv_(argv) {}

  // Moves to the next argument; false after the last.
  bool Next() { return ++index_ < argc_; }
  // The current argument.
  const char* arg() const { return argv_[index_]; }
  bool Is(const char* name) const { return std::strcmp(arg(), name) == 0; }
  // The current argument's value if it is `flag`: what follows '=' in "--flag=VALUE", or the next
  // argument (consumed) in "--flag VALUE"; nullptr for another argument or a last "--flag".
  const char* Value(const char* flag) {
    const size_t length = std::strlen(flag);
    if (std::strncmp(arg(), flag, length) == 0 && arg()[length] == '=') return arg() + length + 1;
    if (Is(flag) && index_ + 1 < argc_) return argv_[++index_];
    return nullptr;
  }

 private:
  int argc_;
  char** argv_;
  int index_ = 0;
};

}  // namespace factlens

#endif  // FACTLENS_BENCH_FLAGS_H_
