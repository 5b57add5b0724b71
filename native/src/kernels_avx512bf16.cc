// The CPU GEMM for BF16 weights on CPUs with AVX-512 BF16 (Zen 4, Cooper Lake, Sapphire Rapids and later): one
// vdpbf16ps takes 16 products, where the FMA path needs two FMAs, a mask and a shift, and the activations are
// staged as bf16, half the bytes. The arithmetic is the one gemm_avx.inc defines for BF16 weights (activations
// rounded by bf16_input, K in chunks of 16, each lane odd element then even, the scalar tail), so results equal
// fast::linear's and wide::linear's bit for bit. Called only after bf16dot::supported() said yes.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bf16")
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace lx::bf16dot {

bool supported() {
  __builtin_cpu_init();
  return wide::supported() && __builtin_cpu_supports("avx512bf16");
}

namespace {
#define LX_GEMM_WIDE 1
#include "gemm_avx.inc"
#undef LX_GEMM_WIDE

// xb[t] (rows ldx elements apart) = x[t] (rows K apart) rounded by bf16_input: vcvtneps2bf16 rounds to nearest
// even, flushes subnormals and keeps NaNs, as bf16_input does.
void stage_bf16(const float* x, int t0, int t1, int64_t K, uint16_t* xb, int64_t ldx) {
  for (int t = t0; t < t1; t++) {
    const float* a = x + int64_t(t) * K;
    uint16_t* b = xb + int64_t(t) * ldx;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(b + k),
                       reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(_mm256_loadu_ps(a + k))));
    for (; k < K; k++) b[k] = bf16_input(a[k]);
  }
}

inline __m256bh load_bh(const uint16_t* p) {
  return reinterpret_cast<__m256bh>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// R weight rows (W, rows K apart: contiguous) × NT token rows (x, ldx apart) over the whole chunks [0, k16),
// into acc[t*R + r]. With `prefetch` (the rows come from memory, not cache) it starts the L2 prefetch of the
// block's bytes kPrefetchAhead on, R lines per 32 elements consumed, as gemv8 does.
template <int R, int NT>
inline void tile_dot(const uint16_t* W, int64_t K, const uint16_t* x, int64_t ldx, int64_t k16, __m256* acc,
                     bool prefetch) {
  __m256 a[NT * R];
  for (int i = 0; i < NT * R; i++) a[i] = acc[i];
  const char* pf = reinterpret_cast<const char*>(W) + kPrefetchAhead;
  auto chunk = [&](int64_t k) {
    __m256bh xv[NT];
    for (int t = 0; t < NT; t++) xv[t] = load_bh(x + t * ldx + k);
    for (int r = 0; r < R; r++) {
      const __m256bh w = load_bh(W + r * K + k);
      for (int t = 0; t < NT; t++) a[t * R + r] = _mm256_dpbf16_ps(a[t * R + r], w, xv[t]);
    }
  };
  int64_t k = 0;
  if (prefetch)
    for (; k + 32 <= k16; k += 32) {
      for (int l = 0; l < R; l++) _mm_prefetch(pf + l * 64, _MM_HINT_T1);
      pf += R * 64;
      chunk(k);
      chunk(k + 16);
    }
  for (; k < k16; k += 16) chunk(k);
  for (int i = 0; i < NT * R; i++) acc[i] = a[i];
}

// Rows [r0, r1) × tokens [t, t + NT): R (8 or 4) rows at a time, then 4, then 1.
template <int R, int NT>
void rows_tokens(const uint16_t* W, int64_t K, int64_t r0, int64_t r1, const uint16_t* xt, int64_t ldx, int64_t N,
                 const float* bias, float* yt, bool accumulate, bool prefetch) {
  const int64_t k16 = vec_k<DType::BF16>(K);
  int64_t r = r0;
  for (; R == 8 && r + 8 <= r1; r += 8) {
    __m256 acc[NT * 8];
    for (auto& v : acc) v = _mm256_setzero_ps();
    tile_dot<8, NT>(W + r * K, K, xt, ldx, k16, acc, prefetch);
    for (int t = 0; t < NT; t++)
      finish8<DType::BF16>(acc + t * 8, W, K, r, xt + t * ldx, K, k16, bias, yt + t * N + r, accumulate);
  }
  for (; r + 4 <= r1; r += 4) {
    __m256 acc[NT * 4];
    for (auto& v : acc) v = _mm256_setzero_ps();
    tile_dot<4, NT>(W + r * K, K, xt, ldx, k16, acc, prefetch);
    for (int t = 0; t < NT; t++)
      finish4<DType::BF16>(acc + t * 4, W, K, r, xt + t * ldx, K, k16, bias, yt + t * N + r, accumulate);
  }
  for (; r < r1; r++) {
    __m256 acc[NT];
    for (auto& v : acc) v = _mm256_setzero_ps();
    tile_dot<1, NT>(W + r * K, K, xt, ldx, k16, acc, false);
    for (int t = 0; t < NT; t++)
      finish<DType::BF16>(acc[t], W, K, r, xt + t * ldx, K, k16, bias, yt + t * N + r, accumulate);
  }
}
}  // namespace

// Each thread's share of the rows in blocks of 64, and against each block the tokens in groups of four, on
// tiles of 4 rows × 4 tokens; the last one to three tokens on 8-row tiles. (Any T works; the CPU backend sends
// only T > 3: see CpuBackend::linear.) The first token group streams the block from memory with the L2
// prefetch; the rest find it in L2 (64 rows of K = 2816 are 352 KiB) while their four activation rows sit in
// L1. Measured per thread pair at T = 512 (the q, k, v, o, gate, up, down shapes of the bench model), ms a
// layer: 4×4 tiles 38.9, 8 rows × 3 tokens 43.2, 8 × 2 40.7, 4 × 6 43.1 (blocks of 8 rows); then blocks of
// 8 / 16 / 64 / 128 / 256 rows: 36.7 / 35.6 / 31.4 / 30.5 / 31.6 (fewer passes over the activations); two
// FMAs per pair (wide::linear) 63-67.
constexpr int64_t kDotRows = 64;
void linear(ThreadPool& pool, const float* x_in, int T, const Mat& W, const float* bias, float* y, bool accumulate) {
  const int64_t N = W.rows, K = W.cols;
  if (T <= 0 || N == 0) return;
  // Rows of activations padded off a power of two: at K = 1024, three tokens' rows would share L1 sets.
  const int64_t ldx = K + 32;
  thread_local std::vector<uint16_t> xb;
  if (xb.size() < size_t(T) * ldx) xb.resize(size_t(T) * ldx);
  uint16_t* xs = xb.data();  // the caller's buffer: a worker naming xb would get its own
  pool.parallel_for(
      T, 1, [&](int64_t t0, int64_t t1) { stage_bf16(x_in, int(t0), int(t1), K, xs, ldx); }, int64_t(T) * K);
  const uint16_t* Wb = static_cast<const uint16_t*>(W.data);
  pool.parallel_for(N, kRowBlock, [&](int64_t r0, int64_t r1) {
    for (int64_t rb = r0; rb < r1; rb += kDotRows) {
      const int64_t re = std::min(rb + kDotRows, r1);
      int t = 0;
      for (; t + 4 <= T; t += 4)
        rows_tokens<4, 4>(Wb, K, rb, re, xs + int64_t(t) * ldx, ldx, N, bias, y + int64_t(t) * N, accumulate, t == 0);
      const uint16_t* xt = xs + int64_t(t) * ldx;
      float* yt = y + int64_t(t) * N;
      if (T - t == 3) rows_tokens<8, 3>(Wb, K, rb, re, xt, ldx, N, bias, yt, accumulate, t == 0);
      if (T - t == 2) rows_tokens<8, 2>(Wb, K, rb, re, xt, ldx, N, bias, yt, accumulate, t == 0);
      if (T - t == 1) rows_tokens<8, 1>(Wb, K, rb, re, xt, ldx, N, bias, yt, accumulate, t == 0);
    }
  }, N * K * T);
}

}  // namespace lx::bf16dot

#pragma GCC pop_options
