{
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
    "cflags_cc": ["-std=c++17", "-O3", "-march=native", "-fopenmp", "-fexceptions"],
    "ldflags": ["-fopenmp"],
    "libraries": ["-lopenblas"]
  }]
}
