// The backend interface (a vtable): every op the model needs, with a CPU implementation (reference or fast)
// and room for a CUDA one. The model calls only these; it never includes a kernel header or tests a device.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "common.h"
#include "kernels.h"

namespace lx {

struct SampleRow;   // sampler.h
struct SampleOut;   // sampler.h

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int threads() const = 0;

  virtual void linear(const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate) = 0;
  virtual void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* out) = 0;
  virtual void rope(float* x, int T, int n_heads, int head_dim, const float* cos, const float* sin) = 0;
  virtual void silu_mul(const float* gate, const float* up, int64_t n, float* out) = 0;
  virtual void attention(const AttnArgs& a, const float* q, float* out) = 0;
  virtual void softmax(float* x, int64_t n) = 0;
  // log Σ exp(x), the normaliser of raw log-probabilities.
  virtual double logsumexp(const float* x, int64_t n) = 0;
  // y[t] += scale · B · A · x[t] for every token of every group (adapters differ per group).
  virtual void lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups) = 0;
  // Runs fn(i) for i in [0, n) across the backend's threads (host-side helpers: LoRA segments, sampling).
  virtual void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) = 0;
};

// reference=true: the plain kernels, single-threaded (the yardstick); else the fast kernels when the CPU has
// AVX2/FMA/F16C (falling back to reference otherwise, with the reason in name()).
std::unique_ptr<Backend> make_cpu_backend(bool reference, int n_threads);

}  // namespace lx
