// The driver's GPU commands (cuda-info, cuda-check, cuda-bench).
#pragma once
#include <map>
#include <string>

namespace caravan::cuda {
// Returns the process exit code; throws on errors the caller prints.
int run_cuda_command(const std::string& command, const std::map<std::string, std::string>& args);
}
