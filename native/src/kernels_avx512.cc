// The CPU GEMM built a second time with AVX-512VL (and AVX-512F) enabled: still 256-bit vectors and the same
// FMAs in the same order as fast::linear, so results are identical bit for bit, but the compiler may use all 32
// vector registers, so the 12 accumulators of a tile no longer spill (1.2× on the tile: 92 vs 76 GFLOP/s per
// thread on Zen 4). Called only after wide::supported() said yes.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl")
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace lx::wide {

bool supported() {
  __builtin_cpu_init();
  return fast::supported() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}

#define LX_GEMM_WIDE 1
namespace {
#include "gemm_avx.inc"
}  // namespace
#include "attention_avx.inc"
#undef LX_GEMM_WIDE

void linear(ThreadPool& pool, const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate) {
  linear_dtype(pool, x, T, W, bias, y, accumulate);
}

}  // namespace lx::wide

#pragma GCC pop_options
