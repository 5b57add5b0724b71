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

#include "gemm_avx.inc"

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

}  // namespace

void linear(ThreadPool& pool, const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate) {
  linear_dtype(pool, x, T, W, bias, y, accumulate);
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

namespace {
inline float max_of(const float* x, int64_t n) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  alignas(32) float mb[8];
  _mm256_store_ps(mb, mv);
  float m = -INFINITY;
  for (float v : mb) m = std::max(m, v);
  for (; i < n; i++) m = std::max(m, x[i]);
  return m;
}
}  // namespace

void softmax(float* x, int64_t n) {
  const float m = max_of(x, n);
  int64_t i = 0;
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
  const float m = max_of(x, n);
  int64_t i = 0;
  if (m == -INFINITY) return -INFINITY;
  const __m256 mm = _mm256_set1_ps(m);
  __m256 sv = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) sv = _mm256_add_ps(sv, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mm)));
  double s = hsum(sv);
  for (; i < n; i++) s += exp1(x[i] - m);
  return m + std::log(s);
}

#include "attention_avx.inc"

namespace {
// y[0 .. n) += Σ_j c[j]·Bt[j][0 .. n) over j in order, in registers a chunk of y at a time: the same per-element
// FMA sequence as updating y once per rank row, without a load and store of y per row.
template <DType D>
void expand_row(const float* c, int rank, const void* Bt, int64_t ld, float* y, int n) {
  int o = 0;
  for (; o + 32 <= n; o += 32) {
    __m256 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm256_loadu_ps(y + o + 8 * r);
    for (int j = 0; j < rank; j++) {
      const __m256 cv = _mm256_set1_ps(c[j]);
      for (int r = 0; r < 4; r++) acc[r] = _mm256_fmadd_ps(cv, load8<D>(Bt, j * ld + o + 8 * r), acc[r]);
    }
    for (int r = 0; r < 4; r++) _mm256_storeu_ps(y + o + 8 * r, acc[r]);
  }
  for (; o + 8 <= n; o += 8) {
    __m256 acc = _mm256_loadu_ps(y + o);
    for (int j = 0; j < rank; j++) acc = _mm256_fmadd_ps(_mm256_set1_ps(c[j]), load8<D>(Bt, j * ld + o), acc);
    _mm256_storeu_ps(y + o, acc);
  }
  for (; o < n; o++)
    for (int j = 0; j < rank; j++) y[o] = std::fma(c[j], load1<D>(Bt, j * ld + o), y[o]);
}
// expand_row for two tokens at once (c0 → y0, c1 → y1), sharing each loaded chunk of Bt: per element the same
// FMA sequence as expand_row.
template <DType D>
void expand_rows2(const float* c0, const float* c1, int rank, const void* Bt, int64_t ld, float* y0, float* y1, int n) {
  int o = 0;
  for (; o + 32 <= n; o += 32) {
    __m256 a0[4], a1[4];
    for (int r = 0; r < 4; r++) a0[r] = _mm256_loadu_ps(y0 + o + 8 * r), a1[r] = _mm256_loadu_ps(y1 + o + 8 * r);
    for (int j = 0; j < rank; j++) {
      const __m256 cv0 = _mm256_set1_ps(c0[j]), cv1 = _mm256_set1_ps(c1[j]);
      for (int r = 0; r < 4; r++) {
        const __m256 b = load8<D>(Bt, j * ld + o + 8 * r);
        a0[r] = _mm256_fmadd_ps(cv0, b, a0[r]);
        a1[r] = _mm256_fmadd_ps(cv1, b, a1[r]);
      }
    }
    for (int r = 0; r < 4; r++) _mm256_storeu_ps(y0 + o + 8 * r, a0[r]), _mm256_storeu_ps(y1 + o + 8 * r, a1[r]);
  }
  for (; o + 8 <= n; o += 8) {
    __m256 a0 = _mm256_loadu_ps(y0 + o), a1 = _mm256_loadu_ps(y1 + o);
    for (int j = 0; j < rank; j++) {
      const __m256 b = load8<D>(Bt, j * ld + o);
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(c0[j]), b, a0);
      a1 = _mm256_fmadd_ps(_mm256_set1_ps(c1[j]), b, a1);
    }
    _mm256_storeu_ps(y0 + o, a0), _mm256_storeu_ps(y1 + o, a1);
  }
  for (; o < n; o++)
    for (int j = 0; j < rank; j++) {
      const float b = load1<D>(Bt, j * ld + o);
      y0[o] = std::fma(c0[j], b, y0[o]);
      y1[o] = std::fma(c1[j], b, y1[o]);
    }
}
}  // namespace

// LoRA: work items are (group, chunk of up to 16 tokens); a chunk's tokens are gathered contiguous, shrunk
// with the tile kernel of linear() (four rank rows × two tokens at a time), then expanded two tokens per pass
// over Bt. Each output keeps the operations it would have alone, so a token's result does not depend on its
// neighbours. Items are taken dynamically: groups differ in rank and size.
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
      if (G.dtype == DType::BF16) stage_x(xs.data(), 0, n, d_in, Stage::kPairs, xs.data(), d_in);  // BF16 tiles' lane order
      auto run = [&](auto d_tag) {
        constexpr DType D = decltype(d_tag)::value;
        const int64_t kvec = vec_k<D>(d_in);
        // s[i][j] = A[j]·x[i]: R rank rows × NT tokens per tile (4 × 2 while they last: 8 accumulators).
        auto shrink = [&](auto r_tag, auto nt_tag, int j, int t) {
          constexpr int R = decltype(r_tag)::value, NT = decltype(nt_tag)::value;
          __m256 acc[R * NT];
          for (auto& v : acc) v = _mm256_setzero_ps();
          tile<D, R, NT>(G.A, d_in, j, xs.data() + int64_t(t) * d_in, d_in, 0, kvec, acc);
          for (int tt = 0; tt < NT; tt++) {
            const float* xr = xs.data() + int64_t(t + tt) * d_in;
            float* out = s.data() + int64_t(t + tt) * G.rank + j;
            if constexpr (R == 4) finish4<D>(acc + tt * 4, G.A, d_in, j, xr, d_in, kvec, nullptr, out, false);
            else finish<D>(acc[tt], G.A, d_in, j, xr, d_in, kvec, nullptr, out, false);
          }
        };
        using I1 = std::integral_constant<int, 1>;
        using I2 = std::integral_constant<int, 2>;
        using I3 = std::integral_constant<int, 3>;
        using I4 = std::integral_constant<int, 4>;
        int j = 0;
        for (; j + 4 <= G.rank; j += 4) {
          int t = 0;
          for (; t + 2 <= n; t += 2) shrink(I4{}, I2{}, j, t);
          if (t < n) shrink(I4{}, I1{}, j, t);
        }
        for (; j < G.rank; j++) {
          int t = 0;
          for (; t + 3 <= n; t += 3) shrink(I1{}, I3{}, j, t);
          if (n - t == 2) shrink(I1{}, I2{}, j, t);
          if (n - t == 1) shrink(I1{}, I1{}, j, t);
        }
        for (int i = 0; i < n; i++)
          for (int r = 0; r < G.rank; r++) s[int64_t(i) * G.rank + r] *= G.scale;
        int i = 0;
        for (; i + 2 <= n; i += 2)
          expand_rows2<D>(s.data() + int64_t(i) * G.rank, s.data() + int64_t(i + 1) * G.rank, G.rank, G.Bt, d_out,
                          y + int64_t(G.tok[i0 + i]) * d_out, y + int64_t(G.tok[i0 + i + 1]) * d_out, d_out);
        if (i < n) expand_row<D>(s.data() + int64_t(i) * G.rank, G.rank, G.Bt, d_out, y + int64_t(G.tok[i0 + i]) * d_out, d_out);
      };
      if (G.dtype == DType::BF16) run(std::integral_constant<DType, DType::BF16>{});
      else run(std::integral_constant<DType, DType::F32>{});
    }
  };
  if (work < ThreadPool::kMinParallelWork) body(0, 1);
  else pool.run(body);
}

}  // namespace lx::fast
#pragma GCC pop_options
