#!/usr/bin/env bash
# Builds the native GPU check (nvcc + g++, no Node: build/gpu-check/gpu_check) and runs it: every CUDA op
# against the CPU reference, tiny models decoded on CPU and CUDA, and a short benchmark. Results go to stdout
# and, when $OUT is set, to $OUT/gpu-check.txt, gpu-check.json and gpu-check.log. It changes nothing else.
#
#   scripts/gpu-check.sh                 build, then run everything (about 2-4 minutes on an H200)
#   scripts/gpu-check.sh --build-only    build only (make cuda)
#   scripts/gpu-check.sh --quick         fewer benchmark cases; other flags go to gpu_check (see its header)
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA=$(sh native/src/cuda/find-cuda.sh)
LIB=$(sh native/src/cuda/find-cuda.sh lib)
if [ -z "$CUDA" ]; then
  echo "gpu-check: no CUDA toolkit (nvcc and libcudart_static.a) found; set CUDA_HOME or put nvcc on PATH" >&2
  exit 2
fi
BUILD=build/gpu-check
mkdir -p "$BUILD/obj"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; fi
JOBS=$(nproc 2>/dev/null || echo 2)

NVFLAGS="-std=c++17 -O3 -Xcompiler -ffp-contract=off -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=compute_80 -Inative/src"
CXXFLAGS="-std=c++17 -O3 -ffp-contract=off -fno-math-errno -Wall -Wextra -Wno-unused-parameter -pthread -Inative/src -I$CUDA/include"
HEADERS="native/src/*.h native/src/cuda/*.cuh"
SOURCES="native/src/cuda/*.cu native/src/backend_cpu.cc native/src/kernels_ref.cc native/src/kernels_avx2.cc
         native/src/model.cc native/src/sampler.cc native/src/threadpool.cc native/tests/gpu_check.cc"

newest_header=$(ls -t $HEADERS | head -1)
t0=$(date +%s)
pids=()
objs=()
for src in $SOURCES; do
  obj="$BUILD/obj/$(basename "$src").o"
  objs+=("$obj")
  if [ -f "$obj" ] && [ "$obj" -nt "$src" ] && [ "$obj" -nt "$newest_header" ]; then continue; fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
  case "$src" in
    *.cu) "$CUDA/bin/nvcc" $NVFLAGS -c "$src" -o "$obj" & ;;
    *) g++ $CXXFLAGS -c "$src" -o "$obj" & ;;
  esac
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [ "$fail" != 0 ]; then echo "gpu-check: compile failed" >&2; exit 1; fi
g++ -o "$BUILD/gpu_check" "${objs[@]}" "$LIB/libcudart_static.a" -ldl -lrt -lpthread
echo "gpu-check: built $BUILD/gpu_check in $(( $(date +%s) - t0 )) s"
if [ "${1:-}" = "--build-only" ]; then exit 0; fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
if [ -n "${OUT:-}" ]; then
  set -o pipefail
  "$BUILD/gpu_check" --require-gpu "$@" 2>&1 | tee "$OUT/gpu-check.log"
else
  "$BUILD/gpu_check" --require-gpu "$@"
fi
