// The CPU backend: routes each op to the reference or the fast kernel and owns the thread pool.
// Kernel code lives in kernels_ref.cc / kernels_avx2.cc; nothing here computes.
#include <thread>

#include "backend.h"

namespace lx {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(bool reference, int n_threads)
      : fast_(!reference && fast::supported()),
        why_(reference ? "reference" : (fast_ ? "avx2" : "reference (no AVX2/FMA/F16C on this CPU)")),
        pool_(fast_ ? n_threads : 1) {}

  std::string name() const override { return "cpu-" + why_; }
  int threads() const override { return pool_.size(); }

  void linear(const float* x, int T, const Mat& W, const float* bias, float* y, bool acc) override {
    fast_ ? fast::linear(pool_, x, T, W, bias, y, acc) : ref::linear(x, T, W, bias, y, acc);
  }
  void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* out) override {
    fast_ ? fast::rmsnorm(pool_, x, T, H, w, eps, out) : ref::rmsnorm(x, T, H, w, eps, out);
  }
  void rope(float* x, int T, int nh, int hd, const float* c, const float* s) override {
    fast_ ? fast::rope(pool_, x, T, nh, hd, c, s) : ref::rope(x, T, nh, hd, c, s);
  }
  void silu_mul(const float* g, const float* u, int64_t n, float* out) override {
    fast_ ? fast::silu_mul(pool_, g, u, n, out) : ref::silu_mul(g, u, n, out);
  }
  void attention(const AttnArgs& a, const float* q, float* out) override {
    fast_ ? fast::attention(pool_, a, q, out) : ref::attention(a, q, out);
  }
  void softmax(float* x, int64_t n) override { fast_ ? fast::softmax(x, n) : ref::softmax(x, n); }
  double logsumexp(const float* x, int64_t n) override { return fast_ ? fast::logsumexp(x, n) : ref::logsumexp(x, n); }
  void lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n) override {
    fast_ ? fast::lora(pool_, x, d_in, y, d_out, g, n) : ref::lora(x, d_in, y, d_out, g, n);
  }
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) override {
    pool_.parallel_for(n, 1, fn);
  }

 private:
  bool fast_;
  std::string why_;
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(bool reference, int n_threads) {
  if (n_threads <= 0) n_threads = int(std::thread::hardware_concurrency());
  return std::make_unique<CpuBackend>(reference, n_threads);
}

}  // namespace lx
