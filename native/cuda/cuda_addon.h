// The CUDA stage as a Node-API class beside the CPU one (CudaStage), and
// cudaDevice(gpu): the GPU a host would use, or why it cannot.
#pragma once
#include <napi.h>

namespace caravan::cuda {
void register_addon(Napi::Env env, Napi::Object exports);
}
