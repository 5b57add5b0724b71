// Fast CPU kernels: AVX2/FMA/F16C SIMD, spread over the thread pool. Compiled for those instructions with a
// target pragma and only called after fast::supported() said yes; each one has a twin in kernels_ref.cc.
//
// Batch invariance: every output element of linear() is computed by one thread with the same sequence of
// operations (8 lanes accumulating k in order, a fixed horizontal sum, then the K%8 tail), whatever T is and
// however rows are split. So a sequence's logits do not depend on what else is in the batch or on chunking.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace lx::fast {

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

namespace {

template <DType D>
inline __m256 load8(const void* base, int64_t i) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (D == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <DType D>
inline float load1(const void* base, int64_t i) {
  return load_as_f32(base, D, i);
}

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

// Vectorised e^x, max relative error ~2e-7 over the float range; x below -87 flushes to 0.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
  __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, res);
}

inline float exp1(float x) {
  alignas(32) float b[8] = {x, 0, 0, 0, 0, 0, 0, 0};
  _mm256_store_ps(b, exp8(_mm256_load_ps(b)));
  return b[0];
}

// R weight rows × NT token rows of dot products over k in [k0, k1) (k1 - k0 a multiple of 8), accumulating
// into acc[t*R + r] lane-wise.
template <DType D, int R, int NT>
inline void tile(const void* W, int64_t ldw, int64_t row0, const float* x, int64_t ldx, int64_t k0, int64_t k1,
                 __m256* acc) {
  __m256 a[NT * R];
  for (int i = 0; i < NT * R; i++) a[i] = acc[i];
  for (int64_t k = k0; k < k1; k += 8) {
    __m256 w[R];
    for (int r = 0; r < R; r++) w[r] = load8<D>(W, (row0 + r) * ldw + k);
    for (int t = 0; t < NT; t++) {
      __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
      for (int r = 0; r < R; r++) a[t * R + r] = _mm256_fmadd_ps(w[r], xv, a[t * R + r]);
    }
  }
  for (int i = 0; i < NT * R; i++) acc[i] = a[i];
}

// The K%8 tail and the final write, identical for every path.
template <DType D>
inline void finish(__m256 acc, const void* W, int64_t ldw, int64_t row, const float* xrow, int64_t K, int64_t kvec,
                   const float* bias, float* yout, bool accumulate) {
  float tail = 0.f;
  for (int64_t k = kvec; k < K; k++) tail = std::fma(load1<D>(W, row * ldw + k), xrow[k], tail);
  float v = hsum(acc) + tail;
  if (bias) v += bias[row];
  *yout = accumulate ? *yout + v : v;
}

// One token, eight weight rows: the memory-bound GEMV of batch-1 decode. Same lane-wise k order as tile(), so
// results match every other path bit for bit. The eight rows are one contiguous block of the matrix, and it
// prefetches that block's bytes kPrefetchAhead further on into L2 as it consumes them: a BF16 row stream carries
// half the bytes per instruction of F32, so out-of-order execution alone keeps too few misses in flight, and the
// BF16 GEMV ran at ~24 GB/s where the machine reads 40+ (measured: 43 GB/s with a 16-64 KiB lead into L2; a lead
// into L1, or of under 16 KiB, gained nothing).
constexpr int64_t kPrefetchAhead = 32 << 10;
template <DType D>
inline void gemv8(const void* W, int64_t ldw, int64_t row0, const float* x, int64_t kvec, __m256* acc) {
  constexpr int64_t esz = D == DType::F32 ? 4 : 2;
  constexpr int64_t line = 64 / esz;  // elements per cache line
  const char* rows[8];
  for (int r = 0; r < 8; r++) rows[r] = static_cast<const char*>(W) + (row0 + r) * ldw * esz;
  const char* pf = rows[0] + kPrefetchAhead;
  __m256 a[8];
  for (int r = 0; r < 8; r++) a[r] = acc[r];
  int64_t k = 0;
  for (; k + line <= kvec; k += line) {
    for (int l = 0; l < 8; l++) _mm_prefetch(pf + l * 64, _MM_HINT_T1);
    pf += 8 * 64;
    for (int64_t kk = k; kk < k + line; kk += 8) {
      __m256 xv = _mm256_loadu_ps(x + kk);
      for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(load8<D>(rows[r], kk), xv, a[r]);
    }
  }
  for (; k < kvec; k += 8) {
    __m256 xv = _mm256_loadu_ps(x + k);
    for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(load8<D>(rows[r], k), xv, a[r]);
  }
  for (int r = 0; r < 8; r++) acc[r] = a[r];
}

constexpr int kRowBlock = 16;
constexpr int64_t kKBlock = 256;

template <DType D, int NT>
void rows_tokens_direct(const void* W, int64_t K, int64_t r0, int64_t r1, const float* x, int t0, int64_t N,
                        const float* bias, float* y, bool accumulate) {
  const int64_t kvec = K & ~int64_t(7);
  int64_t r = r0;
  if constexpr (NT == 1) {
    // One token: eight weight rows stream at once (more loads in flight; memory bound).
    for (; r + 8 <= r1; r += 8) {
      __m256 acc[8];
      for (auto& v : acc) v = _mm256_setzero_ps();
      gemv8<D>(W, K, r, x + int64_t(t0) * K, kvec, acc);
      for (int i = 0; i < 8; i++) finish<D>(acc[i], W, K, r + i, x + int64_t(t0) * K, K, kvec, bias, y + int64_t(t0) * N + r + i, accumulate);
    }
  }
  for (; r + 4 <= r1; r += 4) {
    __m256 acc[NT * 4];
    for (auto& v : acc) v = _mm256_setzero_ps();
    tile<D, 4, NT>(W, K, r, x + int64_t(t0) * K, K, 0, kvec, acc);
    for (int t = 0; t < NT; t++)
      for (int i = 0; i < 4; i++)
        finish<D>(acc[t * 4 + i], W, K, r + i, x + int64_t(t0 + t) * K, K, kvec, bias, y + int64_t(t0 + t) * N + r + i, accumulate);
  }
  for (; r < r1; r++) {
    __m256 acc[NT];
    for (auto& v : acc) v = _mm256_setzero_ps();
    tile<D, 1, NT>(W, K, r, x + int64_t(t0) * K, K, 0, kvec, acc);
    for (int t = 0; t < NT; t++)
      finish<D>(acc[t], W, K, r, x + int64_t(t0 + t) * K, K, kvec, bias, y + int64_t(t0 + t) * N + r, accumulate);
  }
}

// Rows [r0, r1) for all T tokens: a 16-row block of weights is converted to f32 once, whole rows at a time (long
// sequential reads the prefetchers follow), into scratch whose row stride is padded off a power of two (rows
// 4 KiB apart would share L1 sets); then 256-k slices of it are reused by every token group, with the lane
// accumulators kept in accbuf between slices.
template <DType D>
void rows_blocked(const void* W, int64_t K, int64_t r0, int64_t r1, const float* x, int T, int64_t N,
                  const float* bias, float* y, bool accumulate, std::vector<float>& scratch, std::vector<float>& accbuf) {
  const int64_t kvec = K & ~int64_t(7);
  const int64_t ldw = kvec + 16;
  if (scratch.size() < size_t(kRowBlock * ldw)) scratch.resize(kRowBlock * ldw);
  if (accbuf.size() < size_t(T) * kRowBlock * 8) accbuf.resize(size_t(T) * kRowBlock * 8);
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t nr = std::min<int64_t>(kRowBlock, r1 - rb);
    std::fill(accbuf.begin(), accbuf.begin() + int64_t(T) * kRowBlock * 8, 0.f);
    auto acc_at = [&](int64_t t, int64_t i) { return accbuf.data() + (t * kRowBlock + i) * 8; };
    for (int64_t i = 0; i < nr; i++)
      for (int64_t k = 0; k < kvec; k += 8) _mm256_storeu_ps(scratch.data() + i * ldw + k, load8<D>(W, (rb + i) * K + k));
    const float* Wb = scratch.data();
    for (int64_t kb = 0; kb < kvec; kb += kKBlock) {
      const int64_t kl = std::min<int64_t>(kKBlock, kvec - kb);
      int t = 0;
      auto group = [&](auto nt_tag) {
        constexpr int NT = decltype(nt_tag)::value;
        int64_t i = 0;
        for (; i + 4 <= nr; i += 4) {
          __m256 acc[NT * 4];
          for (int tt = 0; tt < NT; tt++)
            for (int j = 0; j < 4; j++) acc[tt * 4 + j] = _mm256_loadu_ps(acc_at(t + tt, i + j));
          tile<DType::F32, 4, NT>(Wb, ldw, i, x + int64_t(t) * K, K, kb, kb + kl, acc);
          for (int tt = 0; tt < NT; tt++)
            for (int j = 0; j < 4; j++) _mm256_storeu_ps(acc_at(t + tt, i + j), acc[tt * 4 + j]);
        }
        for (; i < nr; i++) {
          __m256 acc[NT];
          for (int tt = 0; tt < NT; tt++) acc[tt] = _mm256_loadu_ps(acc_at(t + tt, i));
          tile<DType::F32, 1, NT>(Wb, ldw, i, x + int64_t(t) * K, K, kb, kb + kl, acc);
          for (int tt = 0; tt < NT; tt++) _mm256_storeu_ps(acc_at(t + tt, i), acc[tt]);
        }
      };
      for (; t + 3 <= T; t += 3) group(std::integral_constant<int, 3>{});
      if (T - t == 2) group(std::integral_constant<int, 2>{}), t += 2;
      if (T - t == 1) group(std::integral_constant<int, 1>{}), t += 1;
    }
    for (int t = 0; t < T; t++)
      for (int64_t i = 0; i < nr; i++)
        finish<D>(_mm256_loadu_ps(acc_at(t, i)), W, K, rb + i, x + int64_t(t) * K, K, kvec, bias, y + int64_t(t) * N + rb + i, accumulate);
  }
}

template <DType D>
void linear_t(ThreadPool& pool, const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate) {
  const int64_t N = W.rows, K = W.cols;
  pool.parallel_for(N, kRowBlock, [&](int64_t r0, int64_t r1) {
    if (T <= 3) {
      if (T == 3) rows_tokens_direct<D, 3>(W.data, K, r0, r1, x, 0, N, bias, y, accumulate);
      if (T == 2) rows_tokens_direct<D, 2>(W.data, K, r0, r1, x, 0, N, bias, y, accumulate);
      if (T == 1) rows_tokens_direct<D, 1>(W.data, K, r0, r1, x, 0, N, bias, y, accumulate);
      return;
    }
    thread_local std::vector<float> scratch;
    thread_local std::vector<float> accbuf;
    rows_blocked<D>(W.data, K, r0, r1, x, T, N, bias, y, accumulate, scratch, accbuf);
  }, N * K * T);
}

}  // namespace

void linear(ThreadPool& pool, const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate) {
  if (T <= 0 || W.rows == 0) return;
  switch (W.dtype) {
    case DType::F32: return linear_t<DType::F32>(pool, x, T, W, bias, y, accumulate);
    case DType::F16: return linear_t<DType::F16>(pool, x, T, W, bias, y, accumulate);
    case DType::BF16: return linear_t<DType::BF16>(pool, x, T, W, bias, y, accumulate);
  }
}

void rmsnorm(ThreadPool& pool, const float* x, int T, int H, const float* w, float eps, float* out) {
  pool.parallel_for(T, T >= 8 ? 4 : T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xr = x + t * H;
      float* o = out + t * H;
      __m256 acc = _mm256_setzero_ps();
      int i = 0;
      for (; i + 8 <= H; i += 8) {
        __m256 v = _mm256_loadu_ps(xr + i);
        acc = _mm256_fmadd_ps(v, v, acc);
      }
      float ss = hsum(acc);
      for (; i < H; i++) ss = std::fma(xr[i], xr[i], ss);
      float r = 1.f / std::sqrt(ss / float(H) + eps);
      __m256 rv = _mm256_set1_ps(r);
      for (i = 0; i + 8 <= H; i += 8)
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), rv), _mm256_loadu_ps(w + i)));
      for (; i < H; i++) o[i] = xr[i] * r * w[i];
    }
  }, int64_t(T) * H);
}

void rope(ThreadPool& pool, float* x, int T, int n_heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  pool.parallel_for(T, T >= 8 ? 4 : T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int h = 0; h < n_heads; h++) {
        float* v = x + (t * n_heads + h) * head_dim;
        int i = 0;
        for (; i + 8 <= half; i += 8) {
          __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
          __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
          _mm256_storeu_ps(v + i, _mm256_fmsub_ps(a, cv, _mm256_mul_ps(b, sv)));
          _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(b, cv, _mm256_mul_ps(a, sv)));
        }
        for (; i < half; i++) {
          float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  }, int64_t(T) * n_heads * head_dim);
}

void silu_mul(ThreadPool& pool, const float* gate, const float* up, int64_t n, float* out) {
  pool.parallel_for(n, 1024, [&](int64_t b, int64_t e) {
    int64_t i = b;
    const __m256 one = _mm256_set1_ps(1.f);
    for (; i + 8 <= e; i += 8) {
      __m256 g = _mm256_loadu_ps(gate + i);
      __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
    }
    for (; i < e; i++) out[i] = gate[i] / (1.f + exp1(-gate[i])) * up[i];
  }, n * 4);
}

void softmax(float* x, int64_t n) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  alignas(32) float mb[8];
  _mm256_store_ps(mb, mv);
  float m = -INFINITY;
  for (float v : mb) m = std::max(m, v);
  for (; i < n; i++) m = std::max(m, x[i]);
  __m256 mm = _mm256_set1_ps(m), sv = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mm));
    _mm256_storeu_ps(x + i, e);
    sv = _mm256_add_ps(sv, e);
  }
  float s = hsum(sv);
  for (; i < n; i++) {
    x[i] = exp1(x[i] - m);
    s += x[i];
  }
  __m256 inv = _mm256_set1_ps(1.f / s);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  for (; i < n; i++) x[i] *= 1.f / s;
}

double logsumexp(const float* x, int64_t n) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  alignas(32) float mb[8];
  _mm256_store_ps(mb, mv);
  float m = -INFINITY;
  for (float v : mb) m = std::max(m, v);
  for (; i < n; i++) m = std::max(m, x[i]);
  if (m == -INFINITY) return -INFINITY;
  const __m256 mm = _mm256_set1_ps(m);
  __m256 sv = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) sv = _mm256_add_ps(sv, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mm)));
  double s = hsum(sv);
  for (; i < n; i++) s += exp1(x[i] - m);
  return m + std::log(s);
}

namespace {
inline float dot(const float* a, const float* b, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; i++) s = std::fma(a[i], b[i], s);
  return s;
}
inline void axpy(float a, const float* x, float* y, int n) {
  __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] = std::fma(a, x[i], y[i]);
}
}  // namespace

void attention(ThreadPool& pool, const AttnArgs& a, const float* q, float* out) {
  const int hd = a.head_dim, group = a.n_heads / a.n_kv, bs = a.block_size;
  const int64_t units = int64_t(a.T) * a.n_kv;
  int64_t work = 0;
  for (int t = 0; t < a.T; t++) work += int64_t(a.kv_len[t]) * a.n_heads * hd * 2;
  // Strided over threads: later prefill tokens see longer contexts, contiguous chunks would be unbalanced.
  auto body = [&](int tid, int nt) {
    thread_local std::vector<float> sc;
    for (int64_t u = tid; u < units; u += nt) {
      const int t = int(u / a.n_kv), kh = int(u % a.n_kv);
      const int L = a.kv_len[t], j0 = a.kv_begin ? a.kv_begin[t] : 0;
      const int32_t* bt = a.block_table[t];
      if (sc.size() < size_t(L) * group) sc.resize(size_t(L) * group);
      // scores[g][j] for the q heads sharing this kv head
      for (int j = j0; j < L; j++) {
        const bool vis = attn_visible(a, t, j);
        const float* kv = a.k_cache + ((int64_t(bt[j / bs]) * a.n_kv + kh) * bs + j % bs) * hd;
        for (int g = 0; g < group; g++) {
          const float* qv = q + (int64_t(t) * a.n_heads + kh * group + g) * hd;
          sc[size_t(g) * L + j] = vis ? dot(qv, kv, hd) * a.scale : -INFINITY;
        }
      }
      for (int g = 0; g < group; g++) {
        float* s = sc.data() + size_t(g) * L;
        softmax(s + j0, L - j0);
        float* o = out + (int64_t(t) * a.n_heads + kh * group + g) * hd;
        std::fill(o, o + hd, 0.f);
        for (int j = j0; j < L; j++) {
          if (s[j] == 0.f) continue;
          const float* vv = a.v_cache + ((int64_t(bt[j / bs]) * a.n_kv + kh) * bs + j % bs) * hd;
          axpy(s[j], vv, o, hd);
        }
      }
    }
  };
  if (work < ThreadPool::kMinParallelWork) body(0, 1);
  else pool.run(body);
}

// LoRA: work items are (group, chunk of up to 16 tokens); a chunk's tokens are gathered contiguous, shrunk
// with the same tile kernel as linear() (so a token's result does not depend on its neighbours), then
// expanded row by row of Bt. Items are taken dynamically: groups differ in rank and size.
void lora(ThreadPool& pool, const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups) {
  constexpr int kChunk = 16;
  std::vector<std::pair<int, int>> items;  // (group, first token index)
  for (int gi = 0; gi < n_groups; gi++)
    for (int i = 0; i < g[gi].n_tok; i += kChunk) items.emplace_back(gi, i);
  std::atomic<size_t> next{0};
  int64_t work = 0;
  for (int gi = 0; gi < n_groups; gi++) work += int64_t(g[gi].n_tok) * g[gi].rank * (d_in + d_out);
  auto body = [&](int, int) {
    thread_local std::vector<float> xs, s;
    for (size_t it; (it = next.fetch_add(1)) < items.size();) {
      const LoraGroup& G = g[items[it].first];
      const int i0 = items[it].second, n = std::min(kChunk, G.n_tok - i0);
      xs.resize(size_t(n) * d_in);
      s.resize(size_t(n) * G.rank);
      for (int i = 0; i < n; i++) std::copy_n(x + int64_t(G.tok[i0 + i]) * d_in, d_in, xs.data() + int64_t(i) * d_in);
      Mat A{G.A, DType::F32, G.rank, d_in};
      const int64_t kvec = d_in & ~7;
      int t = 0;
      auto shrink = [&](auto nt_tag) {
        constexpr int NT = decltype(nt_tag)::value;
        for (int j = 0; j < G.rank; j++) {
          __m256 acc[NT];
          for (auto& v : acc) v = _mm256_setzero_ps();
          tile<DType::F32, 1, NT>(A.data, d_in, j, xs.data() + int64_t(t) * d_in, d_in, 0, kvec, acc);
          for (int tt = 0; tt < NT; tt++)
            finish<DType::F32>(acc[tt], A.data, d_in, j, xs.data() + int64_t(t + tt) * d_in, d_in, kvec, nullptr,
                               s.data() + int64_t(t + tt) * G.rank + j, false);
        }
      };
      for (; t + 3 <= n; t += 3) shrink(std::integral_constant<int, 3>{});
      if (n - t == 2) shrink(std::integral_constant<int, 2>{}), t += 2;
      if (n - t == 1) shrink(std::integral_constant<int, 1>{}), t += 1;
      for (int i = 0; i < n; i++) {
        float* yr = y + int64_t(G.tok[i0 + i]) * d_out;
        for (int j = 0; j < G.rank; j++) axpy(G.scale * s[int64_t(i) * G.rank + j], G.Bt + int64_t(j) * d_out, yr, d_out);
      }
    }
  };
  if (work < ThreadPool::kMinParallelWork) body(0, 1);
  else pool.run(body);
}

}  // namespace lx::fast
#pragma GCC pop_options
