// Sampling: raw logprobs first, then the processed distribution (penalties → mask → temperature → top-k →
// top-p → typical-p → min-p). The kept set is defined on the order (probability desc, id asc); the draw walks
// the kept set in id order, so the fast and reference paths agree exactly on the same probabilities.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lx {

double rng_uniform(uint64_t seed, uint64_t step) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (step + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * (1.0 / 9007199254740992.0);
}

namespace {

inline bool allowed(const uint32_t* mask, int i) { return !mask || ((mask[i >> 5] >> (i & 31)) & 1u); }

// Indices of the n largest values of v (desc, ties by lower id), written sorted into idx[0..n).
void top_n(const float* v, int V, int n, bool reference, std::vector<int32_t>& idx) {
  auto better = [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  idx.resize(V);
  std::iota(idx.begin(), idx.end(), 0);
  if (reference || n >= V) {
    std::sort(idx.begin(), idx.end(), better);
  } else {
    std::nth_element(idx.begin(), idx.begin() + n, idx.end(), better);
    std::sort(idx.begin(), idx.begin() + n, better);
  }
}

}  // namespace

namespace {

// The processed distribution of a row: penalties → logit bias → mask → (greedy: argmax) → temperature → filters. Returns the
// greedy token, or -1 when sampling: then `idx` holds the kept tokens in id order, `work[id]` their
// probabilities (not renormalised), and the return of `kept_mass` their sum.
int processed(Backend& be, const SampleRow& r, int V, bool reference, std::vector<float>& work, std::vector<int32_t>& idx,
              double* kept_mass) {
  work.assign(r.logits, r.logits + V);
  for (int i = 0; i < r.n_pen; i++) {
    int id = r.pen_ids[i];
    if (id < 0 || id >= V) continue;
    float& x = work[id];
    if (r.repetition_penalty != 1.f) x = x > 0 ? x / r.repetition_penalty : x * r.repetition_penalty;
    if (r.pen_counts[i] > 0) x -= r.presence_penalty + r.frequency_penalty * float(r.pen_counts[i]);
  }
  for (int i = 0; i < r.n_bias; i++)
    if (r.bias_ids[i] >= 0 && r.bias_ids[i] < V) work[r.bias_ids[i]] += r.bias[i];
  if (r.mask)
    for (int i = 0; i < V; i++)
      if (!allowed(r.mask, i)) work[i] = -INFINITY;

  if (!r.do_sample || r.temperature <= 1e-5f || r.top_k == 1) {
    int best = -1;
    for (int i = 0; i < V; i++)
      if (work[i] != -INFINITY && (best < 0 || work[i] > work[best])) best = i;
    return best < 0 ? 0 : best;  // every token masked: the caller's grammar is broken; pick something valid
  }

  float m = -INFINITY;
  for (int i = 0; i < V; i++) m = std::max(m, work[i]);
  const float inv_t = 1.f / r.temperature;
  if (reference) {
    double s = 0;
    std::vector<double> p(V);
    for (int i = 0; i < V; i++) s += p[i] = std::exp(double(work[i] - m) * inv_t);
    for (int i = 0; i < V; i++) work[i] = float(p[i] / s);
  } else {
    for (int i = 0; i < V; i++) work[i] = (work[i] - m) * inv_t;
    be.softmax(work.data(), V);
  }

  // The kept set: the first `keep` tokens in (p desc, id asc) order.
  const bool need_order = r.top_k > 0 || r.top_p < 1.f || r.min_p > 0.f;
  if (need_order) {
    int k = r.top_k > 0 ? std::min(r.top_k, V) : V;
    int probe = (reference || r.top_p >= 1.f) ? k : std::min(k, 64);
    int keep;
    for (;;) {
      top_n(work.data(), V, probe, reference, idx);
      int n = probe;
      if (r.top_p < 1.f) {
        double c = 0;
        int cut = n;
        for (int i = 0; i < n; i++) {
          c += work[idx[i]];
          if (c >= r.top_p) {
            cut = i + 1;
            break;
          }
        }
        if (cut == n && probe < k) {
          probe = std::min(k, probe * 4);
          continue;
        }
        n = cut;
      }
      if (r.min_p > 0.f) {
        float thr = r.min_p * work[idx[0]];
        int cut = 1;
        while (cut < n && work[idx[cut]] >= thr) cut++;
        n = cut;
      }
      keep = n;
      break;
    }
    idx.resize(keep);
  } else {
    idx.resize(V);
    std::iota(idx.begin(), idx.end(), 0);
  }
  bool by_id = !need_order;
  if (r.typical_p < 1.f) {
    // Typical sampling: order the kept tokens by |−log p − H| and keep the smallest prefix of mass typical_p.
    double H = 0, mass = 0;
    for (int32_t id : idx) mass += work[id];
    for (int32_t id : idx)
      if (work[id] > 0) H -= (work[id] / mass) * std::log(work[id] / mass);
    auto shift = [&](int32_t id) { return std::fabs(-std::log(double(work[id]) / mass) - H); };
    std::vector<int32_t> by_shift(idx.begin(), idx.end());
    std::sort(by_shift.begin(), by_shift.end(), [&](int32_t a, int32_t b) {
      double sa = shift(a), sb = shift(b);
      return sa < sb || (sa == sb && a < b);
    });
    double c = 0;
    size_t cut = by_shift.size();
    for (size_t i = 0; i < by_shift.size(); i++) {
      c += work[by_shift[i]] / mass;
      if (c >= r.typical_p) {
        cut = i + 1;
        break;
      }
    }
    by_shift.resize(cut);
    idx.swap(by_shift);
    by_id = false;
  }
  if (!by_id) std::sort(idx.begin(), idx.end());
  double total = 0;
  for (int32_t id : idx) total += work[id];
  *kept_mass = total;
  return -1;
}

// Draws from the kept set (id order) with u in [0, 1) scaled to `mass`; tokens in `removed` count as zero.
int32_t draw(const std::vector<float>& work, const std::vector<int32_t>& idx, double u, double mass,
             const std::vector<int32_t>& removed) {
  double target = u * mass, c = 0;
  int32_t last = -1;
  for (int32_t id : idx) {
    if (std::find(removed.begin(), removed.end(), id) != removed.end()) continue;
    last = id;
    c += work[id];
    if (target < c) return id;
  }
  return last < 0 ? idx.back() : last;
}

bool in_kept(const std::vector<int32_t>& idx, int32_t id) { return std::binary_search(idx.begin(), idx.end(), id); }

}  // namespace

void sample_row(Backend& be, const SampleRow& r, int V, bool reference, std::vector<float>& work, std::vector<int32_t>& idx,
                SampleOut& out) {
  const double lz = be.logsumexp(r.logits, V);
  auto raw_lp = [&](int id) { return float(double(r.logits[id]) - lz); };
  if (r.n_top > 0) {
    int n = std::min(r.n_top, V);
    top_n(r.logits, V, n, reference, idx);
    for (int i = 0; i < n; i++) out.top_ids[i] = idx[i], out.top_logprobs[i] = raw_lp(idx[i]);
  }
  if (r.target >= 0 && r.target < V) out.target_logprob = raw_lp(r.target);
  out.token = -1;
  if (!r.sample) return;
  double mass = 0;
  int greedy = processed(be, r, V, reference, work, idx, &mass);
  out.token = greedy >= 0 ? greedy : draw(work, idx, rng_uniform(r.seed, r.step), mass, {});
  out.logprob = raw_lp(out.token);
}

void verify_tree(Backend& be, const std::vector<SampleRow>& rows, int V, bool reference, const SpecTree& t,
                 std::vector<float>& work, std::vector<int32_t>& idx, SpecResult& res) {
  res.path.clear();
  res.logprobs.clear();
  int cur = 0, depth = 0;
  std::vector<int32_t> children, removed;
  for (;;) {
    const SampleRow& r = rows[t.rows[cur]];
    SampleRow rr = r;
    rr.step = r.step + uint64_t(depth);
    const double lz = be.logsumexp(r.logits, V);
    double mass = 0;
    int greedy = processed(be, rr, V, reference, work, idx, &mass);
    children.clear();
    for (int i = 1; i < t.n; i++)
      if (t.parent[i] == cur) children.push_back(i);
    int next = -1;
    removed.clear();
    if (greedy >= 0) {
      for (int c : children)
        if (t.tokens[c] == greedy) next = c;
      if (next < 0) res.bonus = greedy;
    } else {
      // Deterministic candidates, checked in order: accept c with probability p(c) / remaining mass, else
      // remove it from p. This is sampling from p itself, so the output distribution is exactly p.
      for (size_t k = 0; k < children.size() && next < 0; k++) {
        const int32_t tok = t.tokens[children[k]];
        if (!in_kept(idx, tok) || std::find(removed.begin(), removed.end(), tok) != removed.end()) continue;
        const double pc = work[tok];
        const double u = rng_uniform(rr.seed ^ (0xD1B54A32D192ED03ull * (k + 1)), rr.step);
        if (u * mass < pc) next = children[k];
        else {
          mass -= pc;
          removed.push_back(tok);
        }
      }
      if (next < 0) res.bonus = mass > 0 ? draw(work, idx, rng_uniform(rr.seed, rr.step), mass, removed) : idx.back();
    }
    if (next < 0) {
      res.bonus_logprob = float(double(r.logits[res.bonus]) - lz);
      res.last_row = t.rows[cur];
      return;
    }
    res.path.push_back(next);
    res.logprobs.push_back(float(double(r.logits[t.tokens[next]]) - lz));
    cur = next;
    depth++;
  }
}

}  // namespace lx
