{
  "variables": {
    "cuda_root%": "<!(sh native/src/cuda/find-cuda.sh)",
    "cuda_lib%": "<!(sh native/src/cuda/find-cuda.sh lib)"
  },
  "targets": [
    {
      "target_name": "loraserve_native",
      "sources": [
        "native/src/addon.cc",
        "native/src/backend_cpu.cc",
        "native/src/fileread.cc",
        "native/src/kernels_ref.cc",
        "native/src/kernels_avx2.cc",
        "native/src/kernels_avx512.cc",
        "native/src/kernels_avx512bf16.cc",
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
      "ldflags": ["-pthread"],
      "conditions": [
        ["cuda_root==''", {"sources": ["native/src/cuda/stub.cc"]}],
        ["cuda_root!=''", {
          "sources": ["<!@(ls -1 native/src/cuda/*.cu)"],
          "rules": [
            {
              "rule_name": "nvcc",
              "extension": "cu",
              "inputs": ["<!@(ls -1 native/src/cuda/*.cuh native/src/*.h)"],
              "outputs": ["<(INTERMEDIATE_DIR)/cuda/<(RULE_INPUT_ROOT).o"],
              "action": [
                "<(cuda_root)/bin/nvcc", "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-Xcompiler", "-ffp-contract=off",
                "-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=compute_80",
                "-Inative/src", "-c", "<(RULE_INPUT_PATH)", "-o", "<@(_outputs)"
              ],
              "message": "NVCC <(RULE_INPUT_PATH)",
              "process_outputs_as_sources": 1
            }
          ],
          "libraries": ["<(cuda_lib)/libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
        }]
      ]
    }
  ]
}
