// Probes: a streaming read over a buffer far larger than the caches (with software prefetch, as the decode GEMV
// reads), and independent FMA chains.
// Compiled for AVX2/FMA like the fast kernels; they report 0 on CPUs without them.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "probe.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "kernels.h"

namespace lx {

namespace {
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

double probe_read_bandwidth(int threads) {
  if (!fast::supported()) return 0;
  const size_t bytes = size_t(1) << 30, n = bytes / sizeof(float);
  float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!buf) return 0;
  std::memset(buf, 1, bytes);
  ThreadPool pool(threads);
  std::vector<float> sinks(threads);
  double best = 0;
  for (int pass = 0; pass < 5; pass++) {
    double t0 = now();
    pool.run([&](int tid, int nt) {
      size_t b = n * tid / nt, e = n * (tid + 1) / nt;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = b; i + 32 <= e; i += 32) {
        // The same 32 KiB lead into L2 as the GEMV: the roofline is what a streaming kernel can reach.
        _mm_prefetch(reinterpret_cast<const char*>(buf + i) + (32 << 10), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(buf + i) + (32 << 10) + 64, _MM_HINT_T1);
        a0 = _mm256_add_ps(a0, _mm256_load_ps(buf + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(buf + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(buf + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(buf + i + 24));
      }
      alignas(32) float o[8];
      _mm256_store_ps(o, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
      sinks[tid] = o[0];
    });
    best = std::max(best, double(bytes) / (now() - t0));
  }
  std::free(buf);
  return best;
}

double probe_fma_flops(int threads) {
  if (!fast::supported()) return 0;
  ThreadPool pool(threads);
  const long iters = 20000000;
  std::vector<float> sinks(threads);
  double best = 0;
  for (int pass = 0; pass < 3; pass++) {
    double t0 = now();
    pool.run([&](int tid, int) {
      __m256 a[10];
      for (int i = 0; i < 10; i++) a[i] = _mm256_set1_ps(float(i + tid));
      const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
      for (long k = 0; k < iters; k++)
        for (int i = 0; i < 10; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
      __m256 s = a[0];
      for (int i = 1; i < 10; i++) s = _mm256_add_ps(s, a[i]);
      alignas(32) float o[8];
      _mm256_store_ps(o, s);
      sinks[tid] = o[0];
    });
    best = std::max(best, double(iters) * 10 * 8 * 2 * threads / (now() - t0));
  }
  return best;
}

}  // namespace lx
#pragma GCC pop_options
