#!/usr/bin/env bash
# Builds the native GPU check (nvcc + g++, no Node: build/gpu-check/gpu_check) and runs it: every CUDA op
# against the CPU reference, tiny models decoded on CPU and CUDA, and a short benchmark. Results go to stdout
# and, when $OUT is set, to $OUT/gpu-check.log and $OUT/{ops,e2e,bench}.json. It changes nothing else.
#
#   scripts/gpu-check.sh                 build, then run everything (about 2-4 minutes on an H200)
#   scripts/gpu-check.sh --build-only    build only (make cuda)
#   scripts/gpu-check.sh --quick         fewer benchmark cases; --sanitize adds a compute-sanitizer pass;
#                                        other flags go to gpu_check (see native/tests/gpu_check.cc)
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
HEADERS="native/src/*.h native/src/*.inc native/src/cuda/*.cuh"
SOURCES="native/src/cuda/*.cu native/src/backend_cpu.cc native/src/fileread.cc native/src/kernels_ref.cc native/src/kernels_avx2.cc native/src/kernels_avx512.cc native/src/kernels_avx512bf16.cc
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
# Each section in its own process and under its own time limit: a CUDA fault is sticky for a process, so a
# broken kernel in one section cannot hide the results of the others. --sanitize first runs the op and
# end-to-end checks under compute-sanitizer memcheck (slower; finds out-of-bounds accesses that do not crash).
SANITIZE=0
ARGS=()
for a in "$@"; do if [ "$a" = "--sanitize" ]; then SANITIZE=1; else ARGS+=("$a"); fi; done
LOG=/dev/null
if [ -n "${OUT:-}" ]; then LOG="$OUT/gpu-check.log"; fi
status=0
run() {  # name, seconds, gpu_check flags...
  local name=$1 secs=$2
  shift 2
  echo "== $name" | tee -a "$LOG"
  set +e
  timeout "$secs" "$@" --name "$name" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 124 ]; then echo "gpu-check: $name timed out after $secs s" | tee -a "$LOG"; fi
  if [ "$rc" != 0 ]; then status=1; fi
}
BIN="$BUILD/gpu_check --require-gpu"
case " ${ARGS[*]} " in
  *" --self-test "*) ;;  # the CPU stands in for CUDA: no GPU needed
  *) if ! $BIN --skip-ops --skip-e2e --skip-bench --name probe >/dev/null; then
       $BIN --skip-ops --skip-e2e --skip-bench --name probe | tee -a "$LOG" || true
       echo "gpu-check: no usable GPU here; nothing was checked" | tee -a "$LOG"
       exit 3
     fi ;;
esac
if [ "$SANITIZE" = 1 ]; then
  SAN=$(command -v compute-sanitizer || echo "$CUDA/bin/compute-sanitizer")
  run sanitize 300 "$SAN" --tool memcheck --error-exitcode 9 $BIN --skip-bench --quick "${ARGS[@]}"
fi
run ops 150 $BIN --skip-e2e --skip-bench "${ARGS[@]}"
run e2e 150 $BIN --skip-ops --skip-bench "${ARGS[@]}"
run bench 420 $BIN --skip-ops --skip-e2e "${ARGS[@]}"
echo "gpu-check: $([ "$status" = 0 ] && echo "all passed" || echo "FAILURES above") ($(( $(date +%s) - t0 )) s with the build)" | tee -a "$LOG"
exit "$status"
