{
  # CARAVAN_CUDA_LIB names the folder holding libcaravan_cuda.a, the CMake
  # build of native/cuda that scripts/build-native.sh makes first wherever
  # nvcc is; CARAVAN_CUDA_INCLUDE and _LIBDIR are the toolkit's (CMake writes
  # all three to cuda-paths.env). Without them the addon is CPU-only and says
  # so in info().cuda. CARAVAN_MARCH (default native) builds the CPU code for
  # other machines, as CMake's option of that name does.
  "variables": {
    "cuda_lib%": "<!(node -p \"process.env.CARAVAN_CUDA_LIB || ''\")",
    "cuda_include%": "<!(node -p \"process.env.CARAVAN_CUDA_INCLUDE || ''\")",
    "cuda_libdir%": "<!(node -p \"process.env.CARAVAN_CUDA_LIBDIR || ''\")",
    "march%": "<!(node -p \"process.env.CARAVAN_MARCH || 'native'\")"
  },
  "targets": [{
    "target_name": "caravan_engine",
    "sources": [
      "src/addon.cpp", "src/stage.cpp", "src/config.cpp", "src/schedule.cpp", "src/gradcheck.cpp",
      "src/linear.cpp", "src/rmsnorm.cpp", "src/rope.cpp", "src/attention.cpp", "src/swiglu.cpp",
      "src/embedding.cpp", "src/cross_entropy.cpp", "src/adamw.cpp", "src/init.cpp", "src/layout.cpp",
      "src/bottleneck.cpp", "src/mxint8.cpp"
    ],
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "CARAVAN_OPENBLAS"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions"],
    "cflags_cc": ["-std=c++17", "-O3", "-march=<(march)", "-fopenmp", "-fexceptions"],
    "ldflags": ["-fopenmp"],
    "libraries": ["-lopenblas"],
    "conditions": [
      ["cuda_lib!=''", {
        "sources": ["cuda/cuda_addon.cpp"],
        "defines": ["CARAVAN_CUDA"],
        "include_dirs": ["<(cuda_include)"],
        "libraries": ["<(cuda_lib)/libcaravan_cuda.a", "<(cuda_libdir)/libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
      }]
    ]
  }]
}
