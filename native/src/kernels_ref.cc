// Reference kernels: the plainest correct loops, the yardstick every fast kernel is tested against.
// Not used on the serving path unless the backend is created with reference=true.
#include <cmath>
#include <vector>

#include "kernels.h"

namespace lx::ref {

void linear(const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate) {
  const int64_t N = W.rows, K = W.cols;
  // BF16 weights multiply activations rounded to bf16 (bf16_input), as every fast path does.
  std::vector<float> xr;
  if (W.dtype == DType::BF16) {
    xr.resize(size_t(T) * K);
    for (size_t i = 0; i < xr.size(); i++) xr[i] = bf16_to_f32(bf16_input(x[i]));
    x = xr.data();
  }
  for (int t = 0; t < T; t++) {
    for (int64_t n = 0; n < N; n++) {
      double acc = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; k++) acc += double(x[t * K + k]) * double(load_as_f32(W.data, W.dtype, n * K + k));
      float v = float(acc);
      y[t * N + n] = accumulate ? y[t * N + n] + v : v;
    }
  }
}

void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* out) {
  for (int t = 0; t < T; t++) {
    double ss = 0;
    for (int i = 0; i < H; i++) ss += double(x[t * H + i]) * x[t * H + i];
    float r = float(1.0 / std::sqrt(ss / H + eps));
    for (int i = 0; i < H; i++) out[t * H + i] = x[t * H + i] * r * w[i];
  }
}

void rope(float* x, int T, int n_heads, int head_dim, const float* cos, const float* sin) {
  int half = head_dim / 2;
  for (int t = 0; t < T; t++)
    for (int h = 0; h < n_heads; h++) {
      float* v = x + (int64_t(t) * n_heads + h) * head_dim;
      for (int i = 0; i < half; i++) {
        float c = cos[t * half + i], s = sin[t * half + i];
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i++) {
    float g = gate[i];
    out[i] = g / (1.f + std::exp(-g)) * up[i];
  }
}

void softmax(float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  double s = 0;
  for (int64_t i = 0; i < n; i++) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  for (int64_t i = 0; i < n; i++) x[i] = float(x[i] / s);
}

void attention(const AttnArgs& a, const float* q, float* out) {
  const int hd = a.head_dim, group = a.n_heads / a.n_kv, bs = a.block_size;
  std::vector<double> sc;
  for (int t = 0; t < a.T; t++) {
    int L = a.kv_len[t], j0 = a.kv_begin ? a.kv_begin[t] : 0;
    const int32_t* bt = a.block_table[t];
    for (int h = 0; h < a.n_heads; h++) {
      int kh = h / group;
      const float* qv = q + (int64_t(t) * a.n_heads + h) * hd;
      sc.assign(L, -INFINITY);
      double m = -INFINITY;
      for (int j = j0; j < L; j++) {
        if (!attn_visible(a, t, j)) continue;
        const float* kv = a.k_cache + ((int64_t(bt[j / bs]) * a.n_kv + kh) * bs + j % bs) * hd;
        double d = 0;
        for (int i = 0; i < hd; i++) d += double(qv[i]) * kv[i];
        sc[j] = d * a.scale;
        m = sc[j] > m ? sc[j] : m;
      }
      double s = 0;
      for (int j = j0; j < L; j++) {
        sc[j] = std::isinf(sc[j]) ? 0.0 : std::exp(sc[j] - m);
        s += sc[j];
      }
      float* o = out + (int64_t(t) * a.n_heads + h) * hd;
      for (int i = 0; i < hd; i++) {
        double acc = 0;
        for (int j = j0; j < L; j++) {
          if (sc[j] == 0.0) continue;
          const float* vv = a.v_cache + ((int64_t(bt[j / bs]) * a.n_kv + kh) * bs + j % bs) * hd;
          acc += sc[j] * vv[i];
        }
        o[i] = float(acc / s);
      }
    }
  }
}

void lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups) {
  std::vector<double> s;
  for (int gi = 0; gi < n_groups; gi++) {
    const LoraGroup& G = g[gi];
    s.assign(G.rank, 0.0);
    for (int i = 0; i < G.n_tok; i++) {
      const int t = G.tok[i];
      for (int j = 0; j < G.rank; j++) {
        double a = 0;
        for (int k = 0; k < d_in; k++) a += double(load_as_f32(G.A, G.dtype, int64_t(j) * d_in + k)) * x[int64_t(t) * d_in + k];
        s[j] = a;
      }
      for (int o = 0; o < d_out; o++) {
        double d = 0;
        for (int j = 0; j < G.rank; j++) d += s[j] * load_as_f32(G.Bt, G.dtype, int64_t(j) * d_out + o);
        y[int64_t(t) * d_out + o] += float(G.scale * d);
      }
    }
  }
}

double logsumexp(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += std::exp(double(x[i]) - m);
  return m + std::log(s);
}

}  // namespace lx::ref
