#include "device.h"
#include <cstdio>
#include "common.h"

namespace caravan::cuda {

namespace {
// Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s).
double peak_for(const std::string& name, int major) {
  struct Row { const char* match; double tflops; };
  const Row table[] = {
      {"H200", 989.4}, {"H100 PCIe", 756.0}, {"H100 NVL", 835.5}, {"H100", 989.4}, {"GH200", 989.4},
      {"A100", 312.0}, {"A10G", 70.0},      {"L40S", 362.1},     {"L4", 121.0},    {"RTX 4090", 165.2},
  };
  for (const Row& r : table) if (name.find(r.match) != std::string::npos) return r.tflops;
  (void)major;
  return 0.0;
}
}  // namespace

DeviceInfo open_device(int gpu) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    throw std::runtime_error("no CUDA GPU is usable on this machine (" + std::string(cudaGetErrorString(e)) + ")");
  }
  CUDA_CHECK(e);
  if (gpu < 0 || gpu >= count) {
    throw std::runtime_error("GPU " + std::to_string(gpu) + " does not exist: this machine has " + std::to_string(count) +
                             " (indices 0.." + std::to_string(count - 1) + ")");
  }
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, gpu));
  if (p.major < 8) {
    throw std::runtime_error("GPU " + std::to_string(gpu) + " (" + p.name + ", compute capability " + std::to_string(p.major) +
                             "." + std::to_string(p.minor) + ") has no bf16 tensor cores: caravan's CUDA backend needs 8.0 or newer");
  }
  CUDA_CHECK(cudaSetDevice(gpu));
  DeviceInfo d;
  d.index = gpu;
  d.name = p.name;
  CUDA_CHECK(cudaMemGetInfo(&d.free_bytes, &d.total_bytes));
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.multiprocessors = p.multiProcessorCount;
  d.peak_bf16_tflops = peak_for(d.name, p.major);
  return d;
}

std::string to_json(const DeviceInfo& d) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"gpu\":%d,\"name\":\"%s\",\"memory_gib\":%.1f,\"free_gib\":%.1f,\"compute_capability\":\"%d.%d\","
                "\"multiprocessors\":%d,\"peak_bf16_tflops\":%.1f}",
                d.index, d.name.c_str(), d.total_bytes / 1073741824.0, d.free_bytes / 1073741824.0, d.cc_major,
                d.cc_minor, d.multiprocessors, d.peak_bf16_tflops);
  return buf;
}

}  // namespace caravan::cuda
