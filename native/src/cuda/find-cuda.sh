#!/bin/sh
# Prints the CUDA toolkit root when nvcc and the static CUDA runtime are there (then binding.gyp and
# scripts/gpu-check.sh build the CUDA backend), else nothing. It builds nothing itself.
# LORASERVE_CUDA=0 forces a CPU-only build; CUDA_HOME or CUDA_PATH name a toolkit; else nvcc on PATH,
# else /usr/local/cuda. `find-cuda.sh lib` prints the folder holding libcudart_static.a instead.
[ "${LORASERVE_CUDA:-}" = "0" ] && exit 0
root=""
for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
  if [ -n "$c" ] && [ -x "$c/bin/nvcc" ]; then root="$c"; break; fi
done
if [ -z "$root" ]; then
  n=$(command -v nvcc 2>/dev/null || true)
  [ -z "$n" ] && [ -x /usr/local/cuda/bin/nvcc ] && n=/usr/local/cuda/bin/nvcc
  if [ -n "$n" ]; then
    # nvcc may be a wrapper script: ask it where its toolkit is (its dry run prints _HERE_=<root>/bin).
    here=$("$n" -dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -1)
    [ -n "$here" ] || here=$(dirname "$(readlink -f "$n")")
    root=$(cd "$here/.." 2>/dev/null && pwd)
  fi
fi
[ -n "$root" ] || exit 0
for lib in "$root/lib64" "$root/lib" "$root/targets/x86_64-linux/lib" "$root/targets/sbsa-linux/lib"; do
  if [ -f "$lib/libcudart_static.a" ] && [ -f "$root/include/cuda_runtime.h" ]; then
    if [ "${1:-}" = "lib" ]; then echo "$lib"; else echo "$root"; fi
    exit 0
  fi
done
echo "find-cuda.sh: nvcc found at $root but no libcudart_static.a or cuda_runtime.h next to it: building without CUDA" >&2
