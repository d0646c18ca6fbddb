// Command-line parsing shared by the project's binaries (server, tools, benchmarks): `--help`
// prints the usage message and the binary's own flags and exits 0. (absl's --help lists only flags
// defined in a file named after the program, so for server/main.cc it printed "No flags matched".)
#ifndef FACTLENS_SERVER_FLAG_USAGE_H_
#define FACTLENS_SERVER_FLAG_USAGE_H_

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>

#include "absl/flags/internal/program_name.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/string_view.h"

namespace factlens {

// Parses argv like absl::ParseCommandLine. `flag_files` is a substring of the path of the source
// files that define the binary's flags (e.g. "/server/"): --help, -help or -h lists those flags.
inline std::vector<char*> ParseFlags(int argc, char** argv, const char* usage,
                                     absl::string_view flag_files) {
  absl::SetProgramUsageMessage(usage);
  absl::flags_internal::SetProgramInvocationName(argv[0]);
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-help") ||
        !std::strcmp(argv[i], "-h")) {
      absl::flags_internal::FlagsHelp(std::cout, flag_files,
                                      absl::flags_internal::HelpFormat::kHumanReadable, usage);
      std::exit(0);
    }
  }
  return absl::ParseCommandLine(argc, argv);
}

}  // namespace factlens

#endif  // FACTLENS_SERVER_FLAG_USAGE_H_
