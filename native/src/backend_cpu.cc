// The CPU backend: routes each op to the reference or the fast kernel, owns the thread pool, and gives host
// memory as op memory (weights stay in the mapped files). Also the device selection. Kernel code lives in
// kernels_ref.cc / kernels_avx2.cc; the few data moves here (embedding rows, row copies) are plain loops.
#include <cmath>
#include <cstdlib>
#include <thread>

#include "backend.h"
#include "sampler.h"

namespace lx {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(bool reference, int n_threads, CpuKernels widest)
      : fast_(!reference && fast::supported()),
        wide_(fast_ && widest >= CpuKernels::kAvx512 && wide::supported()),
        bf16dot_(wide_ && widest >= CpuKernels::kAvx512Bf16 && bf16dot::supported()),
        why_(reference ? "reference" : bf16dot_ ? "avx512bf16" : wide_ ? "avx512" : fast_ ? "avx2" : "reference (no AVX2/FMA/F16C on this CPU)"),
        pool_(fast_ ? n_threads : 1) {}

  std::string name() const override { return "cpu-" + why_; }
  int threads() const override { return pool_.size(); }

  void linear(const float* x, int T, const Mat& W, const float* bias, float* y, bool acc) override {
    // Up to 3 tokens the GEMV is memory bound, and the FMA build streams a BF16 matrix ~3% faster here (the
    // same results either way).
    if (bf16dot_ && W.dtype == DType::BF16 && T > 3) return bf16dot::linear(pool_, x, T, W, bias, y, acc);
    wide_ ? wide::linear(pool_, x, T, W, bias, y, acc) : fast_ ? fast::linear(pool_, x, T, W, bias, y, acc) : ref::linear(x, T, W, bias, y, acc);
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
    wide_ ? wide::attention(pool_, a, q, out) : fast_ ? fast::attention(pool_, a, q, out) : ref::attention(a, q, out);
  }
  void lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n) override {
    fast_ ? fast::lora(pool_, x, d_in, y, d_out, g, n) : ref::lora(x, d_in, y, d_out, g, n);
  }
  void embed(const int32_t* tokens, int T, const Mat& E, float* x) override {
    const int64_t H = E.cols;
    for (int t = 0; t < T; t++)
      for (int64_t i = 0; i < H; i++) x[t * H + i] = load_as_f32(E.data, E.dtype, int64_t(tokens[t]) * H + i);
  }
  void copy_rows(float* dst, const int64_t* dst_off, const float* src, const int64_t* src_off, int n, int len) override {
    for (int i = 0; i < n; i++) std::copy_n(src + src_off[i], len, dst + dst_off[i]);
  }
  void add_silu(const float* x, const float* t, int64_t n, float* out) override {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] + t[i] / (1.f + std::exp(-t[i]));
  }

  void softmax(float* x, int64_t n) override { fast_ ? fast::softmax(x, n) : ref::softmax(x, n); }
  double logsumexp(const float* x, int64_t n) override { return fast_ ? fast::logsumexp(x, n) : ref::logsumexp(x, n); }
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) override {
    pool_.parallel_for(n, 1, fn);
  }
  Status sample(const SampleRow* rows, int n, int V, bool reference, SampleOut* out) override {
    parallel_for(n, [&](int64_t r0, int64_t r1) {
      thread_local std::vector<float> work;
      thread_local std::vector<int32_t> idx;
      for (int64_t r = r0; r < r1; r++) sample_row(*this, rows[r], V, reference, work, idx, out[r]);
    });
    return Status::Ok();
  }

  Status alloc(size_t bytes, Buffer* out) override {
    void* p = std::calloc(bytes ? bytes : 1, 1);
    if (!p) return Status::NoMem("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    *out = Buffer(p, BufferFree{this});
    return Status::Ok();
  }
  void release(void* p) override { std::free(p); }
  Status upload(void* dst, const void* host, size_t bytes) override {
    if (bytes) std::memcpy(dst, host, bytes);
    return Status::Ok();
  }
  bool host_memory() const override { return true; }
  DType lora_dtype(DType weights) const override { return weights == DType::F32 ? DType::F32 : DType::BF16; }
  Status download(void* host, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(host, src, bytes);
    return Status::Ok();
  }
  Status constant(const Mat& host, Mat* out) override {
    *out = host;
    return Status::Ok();
  }
  Status stage(const void* host, size_t, const void** out) override {
    *out = host;
    return Status::Ok();
  }
  Status view(const void* src, size_t, const void** host) override {
    *host = src;
    return Status::Ok();
  }
  void begin_step() override {}
  Status sync() override { return Status::Ok(); }

 private:
  bool fast_;
  bool wide_;     // linear() through the AVX-512VL build of the fast GEMM
  bool bf16dot_;  // linear() with BF16 weights through AVX-512 BF16 dot products
  std::string why_;
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(bool reference, int n_threads, CpuKernels widest) {
  if (n_threads <= 0) n_threads = int(std::thread::hardware_concurrency());
  return std::make_unique<CpuBackend>(reference, n_threads, widest);
}

Status make_backend(const std::string& device, bool reference, int n_threads, std::unique_ptr<Backend>* out) {
  if (device != "cpu" && device != "cuda" && device != "auto")
    return Status::Invalid("device \"" + device + "\" is not one of cpu, cuda, auto");
  if (device == "cuda" && reference)
    return Status::Invalid("the reference kernels run on the CPU only: use device \"cpu\" with reference, or drop reference");
  if (device == "cuda" || (device == "auto" && !reference && cuda_info().usable)) return make_cuda_backend(n_threads, out);
  *out = make_cpu_backend(reference, n_threads, CpuKernels::kAvx512Bf16);
  return Status::Ok();
}

}  // namespace lx
