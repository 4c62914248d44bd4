// Choosing a GPU: what it is, how much memory it has, its bf16 peak (from a
// table, for MFU), and a clear refusal of one the backend cannot use.
#pragma once
#include <cstddef>
#include <string>

namespace caravan::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  size_t total_bytes = 0, free_bytes = 0;
  int cc_major = 0, cc_minor = 0, multiprocessors = 0;
  double peak_bf16_tflops = 0;  // dense tensor-core peak; 0 when the table does not know the device
};

// Selects the device and returns its info; throws std::runtime_error when
// there is no usable GPU (no driver, no device, index out of range, or a
// compute capability below 8.0, which lacks bf16 tensor cores).
DeviceInfo open_device(int gpu);
std::string to_json(const DeviceInfo& d);

}  // namespace caravan::cuda
