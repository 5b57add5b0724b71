{
  "targets": [
    {
      "target_name": "loraserve_native",
      "sources": [
        "native/src/addon.cc",
        "native/src/backend_cpu.cc",
        "native/src/kernels_ref.cc",
        "native/src/kernels_avx2.cc",
        "native/src/model.cc",
        "native/src/probe.cc",
        "native/src/sampler.cc",
        "native/src/threadpool.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_CPP_EXCEPTIONS", "NAPI_VERSION=8"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "ldflags": ["-pthread"]
    }
  ]
}
