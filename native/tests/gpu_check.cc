// The native GPU check, no Node needed: every CUDA op against the CPU reference kernels (max difference), tiny
// random models decoded greedily on CPU and CUDA, and a short benchmark (GEMM TFLOP/s, LoRA GB/s, decode tok/s of
// a 7B-shaped random model). Built and run by scripts/gpu-check.sh; it does not build anything itself.
//
// gpu_check [--require-gpu] [--skip-ops] [--skip-e2e] [--skip-bench] [--quick] [--self-test] [--name NAME]
// Prints a table; with $OUT set also writes its numbers to $OUT/NAME.json (NAME: gpu-check). Exit 1 when a check
// fails, 3 when --require-gpu and no GPU is usable (0 and a SKIP line otherwise). --self-test runs the op and
// end-to-end checks with the CPU fast kernels in CUDA's place (no GPU needed): it tests this harness.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "cuda/ops.cuh"
#include "model.h"

using namespace lx;

namespace {

// ------------------------------------------------------------------------------------------------------------
// Results

std::vector<std::pair<std::string, double>> g_metrics;
int g_failures = 0;
std::string g_name = "gpu-check";
std::string g_device = "cuda";  // the device under test (--self-test: cpu)

void row(const std::string& section, const std::string& name, const std::string& value, const std::string& limit,
         const std::string& status) {
  if (status == "FAIL") g_failures++;
  std::printf("%-6s %-58s %-22s %-18s %s\n", section.c_str(), name.c_str(), value.c_str(), limit.c_str(), status.c_str());
  std::fflush(stdout);
}
std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
void metric(const std::string& k, double v) { g_metrics.emplace_back(k, v); }

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// ------------------------------------------------------------------------------------------------------------
// Random data

uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in [-1, 1) from (seed, index).
inline float urand(uint64_t seed, uint64_t i) { return float(int64_t(mix(seed * 0x100000001B3ull ^ i) >> 40) - (1 << 23)) / float(1 << 23); }

struct Rng {
  uint64_t seed, i = 0;
  explicit Rng(uint64_t s) : seed(s) {}
  float u() { return urand(seed, i++); }
  int below(int n) { return int((mix(seed ^ (i++ * 0xD1B54A32D192ED03ull)) >> 33) % uint64_t(n)); }
  std::vector<float> vec(size_t n, float s = 1.f) {
    std::vector<float> v(n);
    for (auto& x : v) x = u() * s;
    return v;
  }
};

// f32 → f16, round to nearest even (normal range and subnormals; overflow to infinity).
uint16_t to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u, man = u & 0x7fffffu;
  const int32_t exp = int32_t((u >> 23) & 0xff) - 127 + 15;
  if (((u >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00u | (man ? 0x200u : 0));
  if (exp >= 31) return uint16_t(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    const uint32_t m = man | 0x800000u, shift = uint32_t(14 - exp), half = m >> shift, rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
    return uint16_t(sign | (half + (rem > mid || (rem == mid && (half & 1u)))));
  }
  uint32_t h = sign | (uint32_t(exp) << 10) | (man >> 13);
  const uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return uint16_t(h);
}
std::vector<uint8_t> encode(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> out(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); i++) {
    if (dt == DType::F32) std::memcpy(out.data() + 4 * i, &v[i], 4);
    else {
      uint16_t h = dt == DType::BF16 ? f32_to_bf16(v[i]) : to_f16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------------------
// Host arrays in and out of a backend's op memory.

struct Dev {
  Backend& be;
  std::vector<Buffer> held;
  void ok(const Status& s) {
    if (!s.ok()) throw std::runtime_error(s.code + ": " + s.message);
  }
  template <typename T>
  T* put(const T* host, size_t n) {
    Buffer b;
    ok(be.alloc(n * sizeof(T), &b));
    ok(be.upload(b.get(), host, n * sizeof(T)));
    held.push_back(std::move(b));
    return buf<T>(held.back());
  }
  template <typename T>
  T* put(const std::vector<T>& v) {
    return put(v.data(), v.size());
  }
  template <typename T>
  std::vector<T> get(const T* p, size_t n) {
    std::vector<T> v(n);
    ok(be.sync());
    ok(be.download(v.data(), p, n * sizeof(T)));
    return v;
  }
};

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); i++) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}
double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float v : a) m = std::max(m, double(std::fabs(v)));
  return m;
}

// Runs `op` on the reference CPU backend and on CUDA with the same inputs, then compares max |ref - cuda|
// relative to max |ref| (abs=true: absolute) against tol.
void compare(const std::string& name, Backend& ref, Backend& gpu, double tol,
             const std::function<std::vector<float>(Backend&, Dev&)>& op, bool absolute = false) {
  try {
    Dev dr{ref, {}}, dg{gpu, {}};
    std::vector<float> a = op(ref, dr), b = op(gpu, dg);
    const double d = max_diff(a, b), scale = absolute ? 1.0 : std::max(max_abs(a), 1e-30);
    const double e = d / scale;
    row("ops", name, fmt(absolute ? "%.3g abs" : "%.3g rel", e), fmt("< %.3g", tol), e < tol ? "ok" : "FAIL");
    metric("ops." + name, e);
  } catch (const std::exception& ex) {
    row("ops", name, "error", ex.what(), "FAIL");
  }
}

// ------------------------------------------------------------------------------------------------------------
// Op checks

void check_ops(Backend& ref, Backend& gpu) {
  Rng R(1);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const int V = 300, H = 72;
    auto e = encode(R.vec(size_t(V) * H), dt);
    std::vector<int32_t> tok = {5, 0, 299, 5, 17};
    compare(std::string("embed ") + dtype_name(dt), ref, gpu, 1e-30, [&](Backend& be, Dev& d) {
      float* x = d.put(std::vector<float>(tok.size() * H));
      be.embed(d.put(tok), int(tok.size()), Mat{d.put(e), dt, V, H}, x);
      return d.get(x, tok.size() * H);
    }, true);
  }
  for (auto [T, H] : {std::pair{1, 64}, {17, 4096}, {5, 5000}}) {
    auto x = R.vec(size_t(T) * H, 3), w = R.vec(H);
    compare("rmsnorm T=" + std::to_string(T) + " H=" + std::to_string(H), ref, gpu, 1e-5, [&](Backend& be, Dev& d) {
      float* o = d.put(std::vector<float>(x.size()));
      be.rmsnorm(d.put(x), T, H, d.put(w), 1e-5f, o);
      return d.get(o, x.size());
    });
  }
  for (auto [T, nh, hd] : {std::tuple{9, 8, 128}, {3, 4, 24}, {1, 32, 64}}) {
    auto x = R.vec(size_t(T) * nh * hd);
    std::vector<float> c(size_t(T) * hd / 2), s(c.size());
    for (size_t i = 0; i < c.size(); i++) c[i] = std::cos(float(i) * 0.37f), s[i] = std::sin(float(i) * 0.37f);
    compare("rope T=" + std::to_string(T) + " heads=" + std::to_string(nh) + " hd=" + std::to_string(hd), ref, gpu, 1e-5,
            [&](Backend& be, Dev& d) {
              float* xd = d.put(x);
              be.rope(xd, T, nh, hd, d.put(c), d.put(s));
              return d.get(xd, x.size());
            });
  }
  {
    const int64_t n = 100003;
    auto g = R.vec(n, 8), u = R.vec(n);
    compare("silu_mul n=100003", ref, gpu, 1e-5, [&](Backend& be, Dev& d) {
      float* o = d.put(std::vector<float>(n));
      be.silu_mul(d.put(g), d.put(u), n, o);
      return d.get(o, n);
    });
    compare("add_silu (Medusa residual) n=100003", ref, gpu, 1e-5, [&](Backend& be, Dev& d) {
      float* o = d.put(std::vector<float>(n));
      be.add_silu(d.put(u), d.put(g), n, o);
      return d.get(o, n);
    });
  }
  {
    const int rows = 50, len = 136, pool = 200;
    auto src = R.vec(size_t(pool) * len);
    std::vector<int64_t> so(rows), dof(rows);
    for (int i = 0; i < rows; i++) so[i] = int64_t(R.below(pool)) * len, dof[i] = int64_t(i * 3 + 1) * len;
    compare("copy_rows (KV writes, moves, row gathers)", ref, gpu, 1e-30, [&](Backend& be, Dev& d) {
      float* dst = d.put(std::vector<float>(size_t(rows) * 3 * len + len));
      be.copy_rows(dst, d.put(dof), d.put(src), d.put(so), rows, len);
      return d.get(dst, size_t(rows) * 3 * len + len);
    }, true);
  }
  // Paged attention: decode rows with long contexts, prefill chunks, GQA, odd head sizes, windows, tree masks.
  struct AttnCase {
    const char* name;
    int T, heads, kv, hd, max_ctx, window;
    bool tree;
  };
  for (const AttnCase& c : {AttnCase{"decode GQA 32/8 hd128 ctx≤2000", 8, 32, 8, 128, 2000, 0, false},
                            AttnCase{"prefill chunk MHA 8/8 hd64", 64, 8, 8, 64, 200, 0, false},
                            AttnCase{"MQA 4/1 hd24 window 7", 9, 4, 1, 24, 100, 7, false},
                            AttnCase{"tree mask GQA 16/4 hd128", 12, 16, 4, 128, 300, 0, true},
                            AttnCase{"hd256 GQA 16/2", 5, 16, 2, 256, 500, 0, false}}) {
    const int bs = 16, max_blocks = (c.max_ctx + bs - 1) / bs, n_blocks = max_blocks * 2;
    auto kc = R.vec(size_t(n_blocks) * c.kv * bs * c.hd), vc = R.vec(kc.size()), q = R.vec(size_t(c.T) * c.heads * c.hd);
    std::vector<int32_t> tables(size_t(c.T) * max_blocks), kv_len(c.T), kv_begin(c.T), tree_base(c.T);
    std::vector<uint64_t> tree_mask(c.T);
    for (int t = 0; t < c.T; t++) {
      for (int b = 0; b < max_blocks; b++) tables[size_t(t) * max_blocks + b] = R.below(n_blocks);
      kv_len[t] = 1 + R.below(c.max_ctx);
      kv_begin[t] = c.window ? std::max(0, kv_len[t] - c.window) : 0;
      tree_base[t] = std::max(0, kv_len[t] - 6);
      tree_mask[t] = 0x21ull | (1ull << (t % 6)) | (mix(t) & 0x3f);
    }
    compare(std::string("attention ") + c.name, ref, gpu, 1e-4, [&](Backend& be, Dev& d) {
      AttnArgs a;
      a.T = c.T, a.n_heads = c.heads, a.n_kv = c.kv, a.head_dim = c.hd, a.block_size = bs;
      a.scale = 1.f / std::sqrt(float(c.hd));
      const int32_t* td = d.put(tables);
      std::vector<const int32_t*> bt(c.T);
      for (int t = 0; t < c.T; t++) bt[t] = td + size_t(t) * max_blocks;
      a.block_table = d.put(bt);
      a.kv_len = d.put(kv_len);
      a.kv_begin = d.put(kv_begin);
      if (c.tree) a.tree_base = d.put(tree_base), a.tree_mask = d.put(tree_mask);
      a.k_cache = d.put(kc);
      a.v_cache = d.put(vc);
      float* o = d.put(std::vector<float>(q.size()));
      be.attention(a, d.put(q), o);
      return d.get(o, q.size());
    }, true);
  }
  // Linear: every dtype, decode and prefill shapes, K not a multiple of 8 (the f32 kernel), bias and accumulate.
  struct LinCase {
    int T, K, N;
  };
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (LinCase c : {LinCase{1, 4096, 4096}, LinCase{7, 333, 45}, LinCase{16, 4096, 1000}, LinCase{64, 2048, 1024},
                      LinCase{300, 1024, 768}, LinCase{40, 136, 72}}) {
      auto x = R.vec(size_t(c.T) * c.K), bias = R.vec(c.N), y0 = R.vec(size_t(c.T) * c.N);
      auto w = encode(R.vec(size_t(c.N) * c.K, std::sqrt(3.f / float(c.K))), dt);
      // Tensor cores see x rounded to the weight's 16-bit type (relative error 2^-9 per element).
      const bool tc = dt != DType::F32 && c.K % 8 == 0;
      for (bool acc : {false, true})
        compare("linear " + std::string(dtype_name(dt)) + " T=" + std::to_string(c.T) + " K=" + std::to_string(c.K) + " N=" +
                    std::to_string(c.N) + (acc ? " accumulate" : " bias") + (tc ? " (tensor cores)" : ""),
                ref, gpu, tc ? 1e-2 : 2e-5, [&](Backend& be, Dev& d) {
                  float* y = d.put(acc ? y0 : std::vector<float>(y0.size()));
                  be.linear(d.put(x), c.T, Mat{d.put(w), dt, c.N, c.K}, acc ? nullptr : d.put(bias), y, acc);
                  return d.get(y, y0.size());
                });
    }
  // LoRA: gather form (one token per adapter, mixed ranks) and segment form (long segments).
  struct LoraCase {
    const char* name;
    std::vector<int> sizes, ranks;
    int d_in, d_out;
  };
  for (const LoraCase& c : {LoraCase{"BGMV 64 adapters x 1 token, ranks 4..16, 4096->4096", std::vector<int>(64, 1), {4, 8, 16, 12}, 4096, 4096},
                            LoraCase{"BGMV 6 adapters, 37->29 (unaligned)", {1, 1, 2, 1, 1, 1}, {1, 3, 8, 13, 2, 5}, 37, 29},
                            LoraCase{"SGMV 3 adapters x 100/7/33 tokens, ranks 8/16/1, 1024->2816", {100, 7, 33}, {8, 16, 1}, 1024, 2816},
                            LoraCase{"SGMV lm_head-like 4096->32000, rank 16", {20, 3}, {16, 16}, 4096, 32000}}) {
    int T = 0;
    for (int s : c.sizes) T += s;
    auto x = R.vec(size_t(T) * c.d_in), y0 = R.vec(size_t(T) * c.d_out);
    std::vector<std::vector<float>> A, Bt;
    std::vector<std::vector<int32_t>> toks;
    std::vector<int32_t> perm(T);
    for (int i = 0; i < T; i++) perm[i] = i;
    for (int i = T - 1; i > 0; i--) std::swap(perm[i], perm[R.below(i + 1)]);
    int next = 0;
    for (size_t g = 0; g < c.sizes.size(); g++) {
      const int r = c.ranks[g % c.ranks.size()];
      A.push_back(R.vec(size_t(r) * c.d_in, 0.1f));
      Bt.push_back(R.vec(size_t(r) * c.d_out, 0.1f));
      toks.emplace_back(perm.begin() + next, perm.begin() + next + c.sizes[g]);
      next += c.sizes[g];
    }
    compare(std::string("lora ") + c.name, ref, gpu, 1e-4, [&](Backend& be, Dev& d) {
      std::vector<LoraGroup> gs;
      for (size_t g = 0; g < c.sizes.size(); g++) {
        const int r = c.ranks[g % c.ranks.size()];
        gs.push_back(LoraGroup{d.put(A[g]), d.put(Bt[g]), r, 0.5f + float(g % 3), int(toks[g].size()), d.put(toks[g])});
      }
      float* y = d.put(y0);
      be.lora(d.put(x), c.d_in, y, c.d_out, gs.data(), int(gs.size()));
      return d.get(y, y0.size());
    });
  }
}

// Sampling: rows without a draw run on the device, the others on the host; choices must match exactly.
void check_sampling(Backend& ref, Backend& gpu) {
  struct Case {
    const char* name;
    int rows, V;
    std::function<void(SampleRow&, int, std::vector<int32_t>&, std::vector<int32_t>&, std::vector<uint32_t>&)> set;
  };
  const std::vector<Case> cases = {
      {"greedy, 5 alternatives, target logprob, V=32000", 16, 32000,
       [](SampleRow& r, int i, auto&, auto&, auto&) { r.n_top = 5, r.target = 17 * i; }},
      {"greedy with penalties and a 50% mask, V=32000", 16, 32000,
       [](SampleRow& r, int i, std::vector<int32_t>& ids, std::vector<int32_t>& cnt, std::vector<uint32_t>& mask) {
         r.repetition_penalty = 1.3f, r.presence_penalty = 0.5f, r.frequency_penalty = 0.2f, r.n_top = 3;
         for (int k = 0; k < 300; k++) ids.push_back(int32_t(mix(uint64_t(i) * 1000 + k) % 1500)), cnt.push_back(k % 3);
         std::sort(ids.begin(), ids.end());
         ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
         cnt.resize(ids.size());
         mask.resize((32000 + 31) / 32);
         for (size_t w = 0; w < mask.size(); w++) mask[w] = uint32_t(mix(w + 77 * i));
       }},
      {"logprobs only (prompt rows), 64 alternatives", 8, 32000, [](SampleRow& r, int, auto&, auto&, auto&) { r.sample = false, r.n_top = 64; }},
      {"every token masked: token 0", 2, 1000,
       [](SampleRow& r, int, auto&, auto&, std::vector<uint32_t>& mask) { mask.assign((1000 + 31) / 32, 0u); }},
      {"duplicate penalty ids (host path)", 4, 5000,
       [](SampleRow& r, int, std::vector<int32_t>& ids, std::vector<int32_t>& cnt, auto&) {
         r.repetition_penalty = 1.5f;
         ids = {3, 3, 9, 1, 3};
         cnt = {1, 1, 0, 2, 1};
       }},
      {"temperature 0.8, top-k 40, top-p 0.9 (host path)", 16, 32000,
       [](SampleRow& r, int i, auto&, auto&, auto&) { r.do_sample = true, r.temperature = 0.8f, r.top_k = 40, r.top_p = 0.9f, r.seed = 5 + i, r.step = 3, r.n_top = 2; }},
      {"greedy, Qwen-sized vocabulary V=151936", 4, 151936, [](SampleRow& r, int, auto&, auto&, auto&) { r.n_top = 4; }},
  };
  Rng R(21);
  for (const Case& c : cases) {
    try {
      auto logits = R.vec(size_t(c.rows) * c.V, 6.f);
      for (int i = 0; i < c.rows; i++) logits[size_t(i) * c.V + (i * 7919) % c.V] += 9.f;  // a clear winner in most rows
      logits[5] = logits[6];  // a tie for the alternatives
      std::vector<std::vector<int32_t>> ids(c.rows), cnt(c.rows);
      std::vector<std::vector<uint32_t>> masks(c.rows);
      std::vector<SampleRow> rows(c.rows);
      for (int i = 0; i < c.rows; i++) c.set(rows[i], i, ids[i], cnt[i], masks[i]);
      std::vector<std::vector<int32_t>> tops[2];
      std::vector<std::vector<float>> toplps[2];
      std::vector<SampleOut> outs[2];
      int k = 0;
      for (Backend* be : {&ref, &gpu}) {
        Dev d{*be, {}};
        float* ld = d.put(logits);
        std::vector<SampleRow> rr = rows;
        outs[k].resize(c.rows);
        tops[k].assign(c.rows, std::vector<int32_t>(64, -1));
        toplps[k].assign(c.rows, std::vector<float>(64, 0.f));
        for (int i = 0; i < c.rows; i++) {
          rr[i].logits = ld + size_t(i) * c.V;
          rr[i].pen_ids = ids[i].data(), rr[i].pen_counts = cnt[i].data(), rr[i].n_pen = int(ids[i].size());
          rr[i].mask = masks[i].empty() ? nullptr : masks[i].data();
          outs[k][i].top_ids = tops[k][i].data(), outs[k][i].top_logprobs = toplps[k][i].data();
        }
        d.ok(be->sample(rr.data(), c.rows, c.V, be == &ref, outs[k].data()));
        k++;
      }
      int same = 0;
      double lp = 0;
      for (int i = 0; i < c.rows; i++) {
        same += outs[0][i].token == outs[1][i].token && tops[0][i] == tops[1][i];
        lp = std::max({lp, double(std::fabs(outs[0][i].logprob - outs[1][i].logprob)),
                       double(std::fabs(outs[0][i].target_logprob - outs[1][i].target_logprob))});
        for (int j = 0; j < 64; j++) lp = std::max(lp, double(std::fabs(toplps[0][i][j] - toplps[1][i][j])));
      }
      const bool ok = same == c.rows && lp < 1e-4;
      row("ops", std::string("sample ") + c.name, std::to_string(same) + "/" + std::to_string(c.rows) + fmt(" same, lp %.2g", lp),
          "all same, lp < 1e-4", ok ? "ok" : "FAIL");
    } catch (const std::exception& ex) {
      row("ops", std::string("sample ") + c.name, "error", ex.what(), "FAIL");
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Random models in memory

struct Shape {
  std::string name;
  int vocab, hidden, inter, layers, heads, kv, hd;
  DType dt;
  bool tied = false, bias = false;
  int window = 0;
};

struct MemModel {
  std::unique_ptr<uint8_t[]> data;
  size_t size = 0;
  std::vector<TensorRef> tensors;
  std::vector<float> scales;  // per tensor: uniform amplitude (norms: 1 ± scale)
};

MemModel make_weights(const Shape& s, uint64_t seed) {
  MemModel m;
  const int64_t H = s.hidden, QD = int64_t(s.heads) * s.hd, KD = int64_t(s.kv) * s.hd;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale) {
    TensorRef t;
    t.name = name, t.file = 0, t.dtype = s.dt, t.shape = shape;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t.offset = (m.size + 63) & ~size_t(63);
    t.nbytes = uint64_t(n) * dtype_size(s.dt);
    m.size = t.offset + t.nbytes;
    m.tensors.push_back(t);
    m.scales.push_back(scale);
  };
  auto lin = [](int64_t cols) { return std::sqrt(3.f / float(cols)); };
  add("model.embed_tokens.weight", {s.vocab, H}, 1.f);
  for (int l = 0; l < s.layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "self_attn.q_proj.weight", {QD, H}, lin(H));
    add(p + "self_attn.k_proj.weight", {KD, H}, lin(H));
    add(p + "self_attn.v_proj.weight", {KD, H}, lin(H));
    add(p + "self_attn.o_proj.weight", {H, QD}, lin(QD));
    add(p + "mlp.gate_proj.weight", {s.inter, H}, lin(H));
    add(p + "mlp.up_proj.weight", {s.inter, H}, lin(H));
    add(p + "mlp.down_proj.weight", {H, s.inter}, lin(s.inter));
    add(p + "input_layernorm.weight", {H}, -0.1f);
    add(p + "post_attention_layernorm.weight", {H}, -0.1f);
    if (s.bias) {
      add(p + "self_attn.q_proj.bias", {QD}, 0.1f);
      add(p + "self_attn.k_proj.bias", {KD}, 0.1f);
      add(p + "self_attn.v_proj.bias", {KD}, 0.1f);
    }
  }
  add("model.norm.weight", {H}, -0.1f);
  if (!s.tied) add("lm_head.weight", {s.vocab, H}, 4.f * lin(H));  // peaky logits: few near-ties
  m.data.reset(new uint8_t[m.size]);
  // Fill in parallel: chunks of 4M elements taken dynamically.
  struct Chunk {
    size_t t;
    int64_t b, e;
  };
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < m.tensors.size(); t++) {
    const int64_t n = int64_t(m.tensors[t].nbytes / dtype_size(s.dt));
    for (int64_t b = 0; b < n; b += int64_t(1) << 22) chunks.push_back({t, b, std::min(n, b + (int64_t(1) << 22))});
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t c; (c = next.fetch_add(1)) < chunks.size();) {
      const TensorRef& t = m.tensors[chunks[c].t];
      const float sc = m.scales[chunks[c].t];
      uint8_t* base = m.data.get() + t.offset;
      for (int64_t i = chunks[c].b; i < chunks[c].e; i++) {
        const float u = urand(seed + chunks[c].t, uint64_t(i));
        const float v = sc < 0 ? 1.f - sc * u : sc * u;
        if (s.dt == DType::F32) std::memcpy(base + 4 * i, &v, 4);
        else {
          const uint16_t h = s.dt == DType::BF16 ? f32_to_bf16(v) : to_f16(v);
          std::memcpy(base + 2 * i, &h, 2);
        }
      }
    }
  };
  std::vector<std::thread> th;
  for (unsigned i = 1; i < std::max(1u, std::thread::hardware_concurrency()); i++) th.emplace_back(work);
  work();
  for (auto& t : th) t.join();
  return m;
}

LoadOptions load_options(const Shape& s, const MemModel& w, const std::string& device) {
  LoadOptions o;
  ModelConfig& c = o.cfg;
  c.vocab = s.vocab, c.hidden = s.hidden, c.intermediate = s.inter, c.n_layers = s.layers, c.n_heads = s.heads, c.n_kv = s.kv,
  c.head_dim = s.hd, c.rms_eps = 1e-5f, c.tied = s.tied, c.qkv_bias = s.bias;
  for (int i = 0; i < s.hd / 2; i++) c.inv_freq.push_back(float(1.0 / std::pow(10000.0, 2.0 * i / s.hd)));
  c.window.assign(s.layers, s.window);
  o.memory_files = {{w.data.get(), w.size}};
  o.tensors = w.tensors;
  o.device = device;
  return o;
}

int d_in_of(const ModelConfig& c, int target) {
  return target == kO ? c.n_heads * c.head_dim : target == kDown ? c.intermediate : c.hidden;
}
int d_out_of(const ModelConfig& c, int target) {
  switch (target) {
    case kQ: return c.n_heads * c.head_dim;
    case kK:
    case kV: return c.n_kv * c.head_dim;
    case kGate:
    case kUp: return c.intermediate;
    case kLmHead: return c.vocab;
    default: return c.hidden;
  }
}

// One adapter's modules over the given targets (host arrays kept in `store`).
std::vector<LoraModuleIn> make_adapter(const ModelConfig& c, const std::vector<int>& targets, int rank, float scale, uint64_t seed,
                                       std::vector<std::vector<float>>& store) {
  std::vector<LoraModuleIn> mods;
  Rng R(seed);
  for (int l = -1; l < c.n_layers; l++)
    for (int t : targets) {
      if ((t == kLmHead) != (l < 0)) continue;
      const int di = d_in_of(c, t), dout = d_out_of(c, t);
      store.push_back(R.vec(size_t(rank) * di, std::sqrt(3.f / float(di))));
      store.push_back(R.vec(size_t(dout) * rank, 0.5f / std::sqrt(float(rank))));
      mods.push_back(LoraModuleIn{l, t, rank, scale, store[store.size() - 2].data(), store.back().data()});
    }
  return mods;
}

// A batch of sequences stepping together: the first step prefills each prompt, the next ones decode.
struct Seq {
  std::vector<int32_t> prompt;
  int adapter = -1, pos = 0;
  int32_t next = 0;  // token to feed at the next decode step
  std::vector<int32_t> blocks;
};

Status step(Model& m, std::vector<Seq>& seqs, bool prefill, bool want_logits, int medusa, StepOutput* out) {
  std::vector<int32_t> tokens, positions, seq, adapter, bt_off{0}, bt, out_rows, groups_parent;
  for (size_t i = 0; i < seqs.size(); i++) {
    Seq& s = seqs[i];
    const std::vector<int32_t> ids = prefill ? s.prompt : std::vector<int32_t>{s.next};
    for (size_t j = 0; j < ids.size(); j++) {
      tokens.push_back(ids[j]);
      positions.push_back(s.pos + int(j));
      seq.push_back(int(i));
      adapter.push_back(s.adapter);
    }
    out_rows.push_back(int(tokens.size()) - 1);
    bt.insert(bt.end(), s.blocks.begin(), s.blocks.end());
    bt_off.push_back(int(bt.size()));
  }
  StepInput in;
  in.T = int(tokens.size());
  in.tokens = tokens.data(), in.positions = positions.data(), in.seq = seq.data(), in.adapter = adapter.data();
  in.S = int(seqs.size()), in.bt_offsets = bt_off.data(), in.bt = bt.data();
  in.R = int(out_rows.size()), in.out_rows = out_rows.data();
  in.rows.resize(in.R);
  in.want_logits = want_logits;
  static const int32_t kRoot = -1;
  for (int r = 0; r < in.R; r++) {
    StepInput::Group g;
    g.first = r, g.n = 1, g.medusa = medusa, g.parent = &kRoot;
    in.groups.push_back(g);
  }
  in.medusa_k = 2;
  Status st = m.step(in, out);
  if (!st.ok()) return st;
  for (size_t i = 0; i < seqs.size(); i++) seqs[i].pos += prefill ? int(seqs[i].prompt.size()) : 1;
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------------------------
// End to end: the same tiny model on CPU (fast kernels) and CUDA, teacher-forced with the CPU's greedy tokens.

void check_e2e() {
  const std::vector<Shape> shapes = {
      {"f32 GQA 8/4 hd32", 1000, 256, 512, 4, 8, 4, 32, DType::F32},
      {"bf16 tied MHA 4/4 hd64", 800, 256, 640, 3, 4, 4, 64, DType::BF16, true},
      {"f16 MQA hd24 qkv-bias window 7", 700, 96, 224, 3, 4, 1, 24, DType::F16, false, true, 7},
  };
  for (const Shape& s : shapes) {
    try {
      MemModel w = make_weights(s, 42);
      std::unique_ptr<Model> cpu, gpu;
      for (auto [dev, out] : {std::pair{std::string("cpu"), &cpu}, {g_device, &gpu}}) {
        LoadOptions o = load_options(s, w, dev);
        o.kv_blocks = 64, o.block_size = 16, o.max_step_tokens = 256, o.max_out_rows = 16, o.lora_slots = 4, o.lora_max_rank = 16;
        Status st = Model::load(o, out);
        if (!st.ok()) throw std::runtime_error(st.code + ": " + st.message);
      }
      // Adapters: mixed ranks, one with lm_head; a Medusa set of 3 heads.
      std::vector<std::vector<float>> store;
      const ModelConfig& c = cpu->config();
      auto a0 = make_adapter(c, {kQ, kK, kV, kO, kGate, kUp, kDown, kLmHead}, 4, 2.f, 7, store);
      auto a1 = make_adapter(c, {kQ, kV}, 16, 0.5f, 8, store);
      Rng R(9);
      auto mw = R.vec(size_t(3) * c.hidden * c.hidden, 0.5f / std::sqrt(float(c.hidden))), mb = R.vec(size_t(3) * c.hidden, 0.1f);
      MedusaIn mi;
      mi.heads = 3, mi.w = mw.data(), mi.b = mb.data();
      for (Model* m : {cpu.get(), gpu.get()}) {
        for (auto [slot, mods] : {std::pair{0, &a0}, {1, &a1}}) {
          Status st = m->lora_load(slot, *mods);
          if (!st.ok()) throw std::runtime_error(st.message);
        }
        Status st = m->medusa_load(0, mi);
        if (!st.ok()) throw std::runtime_error(st.message);
      }
      // Four sequences: base, adapter 0, adapter 1, adapter 0 again; prompts of different lengths.
      std::vector<Seq> seqs(4);
      for (int i = 0; i < 4; i++) {
        seqs[i].adapter = i == 0 ? -1 : i == 2 ? 1 : 0;
        for (int j = 0; j < 9 + 7 * i; j++) seqs[i].prompt.push_back(R.below(s.vocab));
        for (int b = 0; b < 4; b++) seqs[i].blocks.push_back(i * 4 + b);
      }
      std::vector<Seq> sg = seqs;
      int agree = 0, total = 0, med_agree = 0, med_total = 0;
      double worst = 0, scale = 0;
      const int steps = 24;
      for (int k = 0; k < steps; k++) {
        StepOutput oc, og;
        Status st = step(*cpu, seqs, k == 0, true, 0, &oc);
        if (st.ok()) st = step(*gpu, sg, k == 0, true, 0, &og);
        if (!st.ok()) throw std::runtime_error(st.code + ": " + st.message);
        worst = std::max(worst, max_diff(oc.logits, og.logits));
        scale = std::max(scale, max_abs(oc.logits));
        for (size_t i = 0; i < seqs.size(); i++) {
          agree += oc.tokens[i] == og.tokens[i], total++;
          seqs[i].next = sg[i].next = oc.tokens[i];  // teacher forcing: both continue with the CPU's token
        }
        for (size_t i = 0; i < oc.medusa_ids.size(); i++) med_agree += oc.medusa_ids[i] == og.medusa_ids[i], med_total++;
      }
      const bool f32 = s.dt == DType::F32;
      const double rel = worst / std::max(scale, 1e-30);
      row("e2e", s.name + ": logits max diff (rel. to max |logit|)", fmt("%.3g", rel), f32 ? "< 1e-4" : "< 2e-2",
          rel < (f32 ? 1e-4 : 2e-2) ? "ok" : "FAIL");
      const double ag = double(agree) / total;
      row("e2e", s.name + ": greedy tokens equal (4 seqs, 3 adapters)", fmt("%.1f%%", 100 * ag), f32 ? "100%" : ">= 90%",
          ag >= (f32 ? 1.0 : 0.9) ? "ok" : "FAIL");
      const double mg = med_total ? double(med_agree) / med_total : 1.0;
      row("e2e", s.name + ": Medusa drafts equal", fmt("%.1f%%", 100 * mg), f32 ? "100%" : ">= 80%", mg >= (f32 ? 1.0 : 0.8) ? "ok" : "FAIL");
      metric("e2e." + s.name + ".logits_rel", rel);
      metric("e2e." + s.name + ".greedy_agree", ag);
    } catch (const std::exception& ex) {
      row("e2e", s.name, "error", ex.what(), "FAIL");
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Benchmarks

constexpr double kPeakBw = 4.3e12;     // H200 device copy, as measured on these machines (bytes read + written)
constexpr double kPeakBf16 = 790e12;   // H200 dense bf16, as measured with cuBLAS on these machines

struct Events {
  cudaEvent_t a, b;
  Events() { cudaEventCreate(&a), cudaEventCreate(&b); }
  ~Events() { cudaEventDestroy(a), cudaEventDestroy(b); }
  // Seconds per call of fn, after warm-up.
  double time(cudaStream_t s, int iters, const std::function<cudaError_t()>& fn) {
    for (int i = 0; i < 3; i++) fn();
    cudaEventRecord(a, s);
    for (int i = 0; i < iters; i++) fn();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return double(ms) / 1e3 / iters;
  }
};

template <typename T>
T* dalloc(size_t n, float scale, uint64_t seed) {
  std::vector<T> h(n);
  for (size_t i = 0; i < n; i++) {
    const float v = urand(seed, i) * scale;
    if constexpr (sizeof(T) == 4) h[i] = v;
    else h[i] = f32_to_bf16(v);
  }
  T* d = nullptr;
  if (cudaMalloc(&d, n * sizeof(T)) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  cudaMemcpy(d, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

void bench_kernels(bool quick) {
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  Events ev;
  int sms = cuda_info().sms;
  // Device copy bandwidth: the practical ceiling of memory-bound kernels.
  {
    const size_t n = size_t(2) << 30;
    void *a, *b;
    cudaMalloc(&a, n), cudaMalloc(&b, n);
    cudaMemset(a, 1, n);
    const double t = ev.time(s, 10, [&] { return cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, s); });
    const double bw = 2.0 * n / t;
    row("bench", "device copy 2 GiB (read + write)", fmt("%.0f GB/s", bw / 1e9), "~4300", "info");
    metric("bench.copy_GBps", bw / 1e9);
    cudaFree(a), cudaFree(b);
  }
  // GEMM: a large square product (tensor-core rate) and decode-shaped products (weight streaming).
  for (auto [M, N, K] : {std::tuple{8192, 8192, 8192}, {4096, 4096, 4096}, {1, 4096, 4096}, {64, 4096, 4096}, {1, 11008, 4096}, {64, 11008, 4096}}) {
    float* x = dalloc<float>(size_t(M) * K, 1.f, 1);
    uint16_t* W = dalloc<uint16_t>(size_t(N) * K, 0.02f, 2);
    float* y = nullptr;
    cudaMalloc(&y, size_t(M) * N * 4);
    const cu::GemmPlan p = cu::gemm_plan(M, N, K, DType::BF16, W, sms);
    void *a16 = nullptr, *ws = nullptr;
    cudaMalloc(&a16, std::max<size_t>(p.a16_bytes, 256));
    cudaMalloc(&ws, std::max<size_t>(p.part_bytes, 256));
    // As the backend runs it: x rounded to bf16, the product, the split-K sum.
    const double t = ev.time(s, M >= 4096 ? 10 : 200, [&] {
      cudaError_t e = cu::to_16bit(x, int64_t(M) * K, DType::BF16, a16, s);
      return e != cudaSuccess ? e : cu::gemm(x, a16, M, W, DType::BF16, N, K, nullptr, y, false, p, ws, s);
    });
    const double flops = 2.0 * M * N * K / t, bytes = double(N) * K * 2 + double(M) * K * 4 + double(M) * N * 4;
    const std::string name = "GEMM bf16 M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                             " (kind " + std::to_string(p.kind) + ", split " + std::to_string(p.splits) + ")";
    if (M >= 4096) {
      row("bench", name, fmt("%.0f TFLOP/s", flops / 1e12), fmt("%.0f%% of 790", 100 * flops / kPeakBf16), "info");
      metric("bench.gemm_" + std::to_string(M) + "_TFLOPs", flops / 1e12);
    } else {
      row("bench", name, fmt("%.0f GB/s", bytes / t / 1e9), fmt("%.0f%% of 4.3 TB/s", 100 * bytes / t / kPeakBw), "info");
      metric("bench.gemm_M" + std::to_string(M) + "_N" + std::to_string(N) + "_GBps", bytes / t / 1e9);
    }
    cudaFree(x), cudaFree(W), cudaFree(y), cudaFree(a16), cudaFree(ws);
  }
  // LoRA: shrink + expand as the backend issues them, f32 adapter weights.
  struct LoraBench {
    const char* name;
    int adapters, tokens_each, rank, d_in, d_out;
  };
  for (const LoraBench& b : {LoraBench{"BGMV 64 adapters x 1 token, rank 16, 4096->4096", 64, 1, 16, 4096, 4096},
                             LoraBench{"BGMV 64 adapters x 1 token, rank 16, 4096->11008", 64, 1, 16, 4096, 11008},
                             LoraBench{"BGMV 64 adapters x 1 token, rank 64, 4096->4096", 64, 1, 64, 4096, 4096},
                             LoraBench{"SGMV 4 adapters x 128 tokens, rank 16, 4096->4096", 4, 128, 16, 4096, 4096}}) {
    const int T = b.adapters * b.tokens_each;
    float* x = dalloc<float>(size_t(T) * b.d_in, 1.f, 3);
    float* y = dalloc<float>(size_t(T) * b.d_out, 1.f, 4);
    float* A = dalloc<float>(size_t(b.adapters) * b.rank * b.d_in, 0.02f, 5);
    float* Bt = dalloc<float>(size_t(b.adapters) * b.rank * b.d_out, 0.02f, 6);
    std::vector<int32_t> tok(T);
    for (int i = 0; i < T; i++) tok[i] = i;
    int32_t* td = nullptr;
    cudaMalloc(&td, T * 4);
    cudaMemcpy(td, tok.data(), T * 4, cudaMemcpyHostToDevice);
    std::vector<LoraGroup> gs;
    for (int g = 0; g < b.adapters; g++)
      gs.push_back(LoraGroup{A + size_t(g) * b.rank * b.d_in, Bt + size_t(g) * b.rank * b.d_out, b.rank, 1.f, b.tokens_each, td + g * b.tokens_each});
    float* ws = nullptr;
    cudaMalloc(&ws, cu::lora_ws_floats(gs.data(), int(gs.size())) * 4);
    const double t = ev.time(s, 200, [&] { return cu::lora(x, b.d_in, y, b.d_out, gs.data(), int(gs.size()), ws, s); });
    // Bytes that must move: every adapter's A and Bt once, x read, y read and written.
    const double bytes = double(b.adapters) * b.rank * (b.d_in + b.d_out) * 4 + double(T) * b.d_in * 4 + 2.0 * T * b.d_out * 4;
    const double bw = bytes / t;
    row("bench", std::string("LoRA ") + b.name, fmt("%.0f GB/s", bw / 1e9), fmt("%.0f%% (target 60%%)", 100 * bw / kPeakBw),
        bw >= 0.6 * kPeakBw ? "ok" : "below");
    metric(std::string("bench.lora.") + b.name + ".GBps", bw / 1e9);
    metric(std::string("bench.lora.") + b.name + ".us", t * 1e6);
    cudaFree(x), cudaFree(y), cudaFree(A), cudaFree(Bt), cudaFree(td), cudaFree(ws);
    if (quick) break;
  }
  cudaStreamDestroy(s);
}

// Decode throughput of a 7B-shaped random model (Llama-2-7B: 32 layers, 4096 hidden, 11008 MLP, 32 heads,
// vocab 32000, BF16 weights), batch 1 and 64, without adapters, with one adapter for all rows, with 64.
void bench_decode(bool quick) {
  const Shape s{"7B", 32000, 4096, 11008, 32, 32, 32, 128, DType::BF16};
  const int P = 64, D = quick ? 8 : 24, B = 64, blocks_per_seq = (P + D + 8 + 15) / 16;
  double t0 = now();
  MemModel w = make_weights(s, 99);
  row("bench", "7B random weights generated on the host", fmt("%.1f s", now() - t0), fmt("%.1f GB", w.size / 1e9), "info");
  LoadOptions o = load_options(s, w, "cuda");
  o.kv_blocks = B * blocks_per_seq, o.block_size = 16, o.max_step_tokens = B * P, o.max_out_rows = B, o.lora_slots = 64, o.lora_max_rank = 16;
  std::unique_ptr<Model> m;
  t0 = now();
  Status st = Model::load(o, &m);
  if (!st.ok()) {
    row("bench", "7B model load", "error", st.message, "FAIL");
    return;
  }
  row("bench", "7B model load onto the GPU (weights + KV pool)", fmt("%.1f s", now() - t0), fmt("KV %.1f GB", m->kv_bytes() / 1e9), "info");

  auto run = [&](int batch, const std::function<int(int)>& adapter_of, const std::string& label) {
    std::vector<Seq> seqs(batch);
    Rng R(uint64_t(batch) * 131);
    for (int i = 0; i < batch; i++) {
      seqs[i].adapter = adapter_of(i);
      for (int j = 0; j < P; j++) seqs[i].prompt.push_back(R.below(s.vocab));
      for (int b = 0; b < blocks_per_seq; b++) seqs[i].blocks.push_back(i * blocks_per_seq + b);
    }
    StepOutput out;
    double tp = now();
    Status st = step(*m, seqs, true, false, -1, &out);
    tp = now() - tp;
    for (int k = 0; k < 3 && st.ok(); k++) {
      for (int i = 0; i < batch; i++) seqs[i].next = out.tokens[i];
      st = step(*m, seqs, false, false, -1, &out);
    }
    double t = now();
    for (int k = 0; k < D && st.ok(); k++) {
      for (int i = 0; i < batch; i++) seqs[i].next = out.tokens[i];
      st = step(*m, seqs, false, false, -1, &out);
    }
    t = now() - t;
    if (!st.ok()) {
      row("bench", label, "error", st.message, "FAIL");
      return 0.0;
    }
    const double tps = double(batch) * D / t;
    row("bench", label, fmt("%.1f tok/s", tps), fmt("%.2f ms/step", 1e3 * t / D), "info");
    row("bench", label + ": its prefill " + std::to_string(batch) + "x" + std::to_string(P), fmt("%.0f tok/s", batch * P / tp),
        "(first run, warm-up incl.)", "info");
    metric("bench.decode." + label, tps);
    return tps;
  };

  const double b1 = run(1, [](int) { return -1; }, "decode batch 1, base model");
  const double b64 = run(B, [](int) { return -1; }, "decode batch 64, base model");
  // Adapters: rank 16 on every linear layer (q,k,v,o,gate,up,down), f32 on the device; then q,v only.
  for (auto [targets, tname] : {std::pair{std::vector<int>{kQ, kK, kV, kO, kGate, kUp, kDown}, std::string("rank 16 on all 7 linear")},
                                {std::vector<int>{kQ, kV}, std::string("rank 16 on q,v")}}) {
    std::vector<std::vector<float>> store;
    auto mods = make_adapter(m->config(), targets, 16, 1.f, 5, store);
    t0 = now();
    for (int slot = 0; slot < 64; slot++) {
      Status ls = m->lora_load(slot, mods);
      if (!ls.ok()) {
        row("bench", "load 64 adapters (" + tname + ")", "error", ls.message, "FAIL");
        return;
      }
    }
    row("bench", "load 64 adapters (" + tname + ")", fmt("%.1f s", now() - t0), fmt("%.0f MB each", m->lora_bytes(0) / 1e6), "info");
    const double a1 = run(1, [](int) { return 0; }, "decode batch 1, 1 adapter (" + tname + ")");
    const double s1 = run(B, [](int) { return 0; }, "decode batch 64, 1 adapter (" + tname + ")");
    const double s64 = run(B, [](int i) { return i; }, "decode batch 64, 64 adapters (" + tname + ")");
    if (b64 > 0) {
      row("bench", "64 distinct adapters / base, batch 64 (" + tname + ")", fmt("%.2fx", s64 / b64), ">= 0.9x", s64 >= 0.9 * b64 ? "ok" : "below");
      metric("bench.ratio64." + tname, s64 / b64);
      // Bytes per decode step: base weights vs the adapters' A and B (f32) read once per distinct adapter.
      const double adapter_bytes = 64.0 * m->lora_bytes(0), base_bytes = double(m->weight_bytes());
      row("bench", "  bytes per step: base weights vs 64 adapters (" + tname + ")",
          fmt("%.1f GB", base_bytes / 1e9) + " vs " + fmt("%.1f GB", adapter_bytes / 1e9),
          fmt("bound %.2fx", base_bytes / (base_bytes + adapter_bytes)), "info");
    }
    if (b1 > 0) metric("bench.ratio1." + tname, a1 / b1);
    (void)s1;
    for (int slot = 0; slot < 64; slot++) m->lora_free(slot);
    if (quick) break;
  }
}

void write_out() {
  const char* out = std::getenv("OUT");
  if (!out || !*out) return;
  std::ofstream js(std::string(out) + "/" + g_name + ".json");
  js << "{\n  \"failures\": " << g_failures << ",\n  \"metrics\": {\n";
  for (size_t i = 0; i < g_metrics.size(); i++) {
    std::string k = g_metrics[i].first;
    for (char& ch : k)
      if (ch == '"' || ch == '\\') ch = '\'';
    js << "    \"" << k << "\": " << (std::isfinite(g_metrics[i].second) ? g_metrics[i].second : -1.0)
       << (i + 1 < g_metrics.size() ? ",\n" : "\n");
  }
  js << "  }\n}\n";
}

}  // namespace

int main(int argc, char** argv) {
  bool require = false, ops = true, e2e = true, bench = true, quick = false;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--require-gpu") require = true;
    else if (a == "--skip-ops") ops = false;
    else if (a == "--skip-e2e") e2e = false;
    else if (a == "--skip-bench") bench = false;
    else if (a == "--quick") quick = true;
    else if (a == "--self-test") g_device = "cpu", bench = false;
    else if (a == "--name" && i + 1 < argc) g_name = argv[++i];
    else {
      std::fprintf(stderr, "usage: gpu_check [--require-gpu] [--skip-ops] [--skip-e2e] [--skip-bench] [--quick] [--self-test] [--name NAME]\n");
      return 2;
    }
  }
  const CudaInfo& ci = cuda_info();
  std::printf("CUDA: compiled %s, runtime %d, driver %d, devices %d, GPU 0: %s (cc %d.%d, %d SMs, %.0f GiB)\n", ci.compiled ? "yes" : "no",
              ci.runtime_version, ci.driver_version, ci.devices, ci.name.c_str(), ci.cc_major, ci.cc_minor, ci.sms, ci.memory_bytes / (1 << 30));
  if (!ci.usable && g_device == "cuda") {
    std::printf("SKIP: no usable GPU: %s\n", ci.error.c_str());
    return require ? 3 : 0;
  }
  std::printf("%-6s %-58s %-22s %-18s %s\n", "", "check", "value", "limit", "status");
  const double t0 = now();
  try {
    if (ops) {
      std::unique_ptr<Backend> ref = make_cpu_backend(true, 1, CpuKernels::kAvx2), gpu;
      Status st = make_backend(g_device, false, 0, &gpu);
      if (!st.ok()) throw std::runtime_error(st.message);
      check_ops(*ref, *gpu);
      check_sampling(*ref, *gpu);
    }
    if (e2e) check_e2e();
    if (bench) {
      bench_kernels(quick);
      bench_decode(quick);
    }
  } catch (const std::exception& ex) {
    row("main", "unexpected failure", "error", ex.what(), "FAIL");
  }
  std::printf("%d failure(s); %.0f s\n", g_failures, now() - t0);
  write_out();
  return g_failures ? 1 : 0;
}
