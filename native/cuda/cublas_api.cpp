#include "cublas_api.h"
#include <dlfcn.h>
#include <mutex>
#include <stdexcept>

namespace caravan::cuda {

namespace {
template <typename F>
void resolve(void* lib, const char* name, F& out, const std::string& file) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out) throw std::runtime_error("cuBLAS library " + file + " has no symbol " + name);
}
}  // namespace

const CublasApi& cublas() {
  static CublasApi api;
  static std::once_flag once;
  static std::string error;
  std::call_once(once, [] {
    const char* candidates[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so",
                                "/usr/local/cuda/lib64/libcublas.so"};
    void* lib = nullptr;
    std::string tried;
    for (const char* c : candidates) {
      lib = dlopen(c, RTLD_NOW | RTLD_LOCAL);
      if (lib) { api.library = c; break; }
      tried += std::string(tried.empty() ? "" : ", ") + c;
    }
    if (!lib) {
      error = "cuBLAS not found (tried " + tried + "): install the CUDA toolkit's cuBLAS or add its folder to LD_LIBRARY_PATH";
      return;
    }
    try {
      resolve(lib, "cublasCreate_v2", api.create, api.library);
      resolve(lib, "cublasDestroy_v2", api.destroy, api.library);
      resolve(lib, "cublasSetStream_v2", api.set_stream, api.library);
      resolve(lib, "cublasGemmEx", api.gemm_ex, api.library);
      resolve(lib, "cublasGemmBatchedEx", api.gemm_batched_ex, api.library);
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  if (!error.empty()) throw std::runtime_error(error);
  return api;
}

}  // namespace caravan::cuda
