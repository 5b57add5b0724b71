// The backend interface (a vtable): every op the model needs and the memory those ops work on ("op memory":
// host memory on the CPU backend, device memory on CUDA), with a CPU implementation (reference or fast) and a
// CUDA one (native/src/cuda/). The model calls only these; it never includes a kernel header or tests a device.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "common.h"
#include "kernels.h"

namespace lx {

struct SampleRow;   // sampler.h
struct SampleOut;   // sampler.h
class Backend;

struct BufferFree {
  Backend* be = nullptr;
  void operator()(void* p) const;
};
// A block of op memory, returned to its backend when dropped.
using Buffer = std::unique_ptr<void, BufferFree>;
template <typename T>
T* buf(const Buffer& b) {
  return static_cast<T*>(b.get());
}

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int threads() const = 0;

  // Ops on op memory. They return nothing: a failure (CUDA) is kept and reported by the next sync().
  virtual void linear(const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate) = 0;
  virtual void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* out) = 0;
  virtual void rope(float* x, int T, int n_heads, int head_dim, const float* cos, const float* sin) = 0;
  virtual void silu_mul(const float* gate, const float* up, int64_t n, float* out) = 0;
  virtual void attention(const AttnArgs& a, const float* q, float* out) = 0;
  // y[t] += scale · B · A · x[t] for every token of every group (adapters differ per group).
  virtual void lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups) = 0;
  // x[t] = E[tokens[t]] as f32, E [vocab, H].
  virtual void embed(const int32_t* tokens, int T, const Mat& E, float* x) = 0;
  // dst[dst_off[i] + j] = src[src_off[i] + j] for i < n, j < len (offsets in floats; rows never overlap).
  virtual void copy_rows(float* dst, const int64_t* dst_off, const float* src, const int64_t* src_off, int n, int len) = 0;
  // out = x + silu(t): the residual block of a Medusa head.
  virtual void add_silu(const float* x, const float* t, int64_t n, float* out) = 0;

  // Host helpers: sampling runs on the host over logits read back with view(), so these take host memory.
  virtual void softmax(float* x, int64_t n) = 0;
  // log Σ exp(x), the normaliser of raw log-probabilities.
  virtual double logsumexp(const float* x, int64_t n) = 0;
  // Runs fn(i) for i in [0, n) across the backend's host threads (LoRA segments, sampling).
  virtual void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) = 0;
  // Samples n rows (sampler.h semantics; each row's logits point into op memory) into out[i], whose top arrays
  // are allocated. CPU: sample_row per row. CUDA: rows that need no draw (greedy, logprob-only) on the device,
  // the others on the host after reading their logits back.
  virtual Status sample(const SampleRow* rows, int n, int V, bool reference, SampleOut* out) = 0;

  // Memory. alloc gives zero-filled op memory; upload/download copy between host and op memory and wait.
  virtual Status alloc(size_t bytes, Buffer* out) = 0;
  virtual void release(void* p) = 0;
  virtual Status upload(void* dst, const void* host, size_t bytes) = 0;
  // True when op memory is host memory (the CPU): callers may then fill it in place instead of staging + upload.
  virtual bool host_memory() const = 0;
  // How LoRA factors are stored for a base model whose weights are `weights`: the CPU keeps BF16 for half-precision
  // models (LoRA in multi-adapter decode is read once per token per adapter: half the bytes) and F32 otherwise;
  // CUDA's kernels take F32.
  virtual DType lora_dtype(DType weights) const = 0;
  virtual Status download(void* host, const void* src, size_t bytes) = 0;
  // Weights and other constants, kept for the backend's life: the CPU returns the host data itself (a mapped
  // file stays zero-copy); CUDA a device copy.
  virtual Status constant(const Mat& host, Mat* out) = 0;
  // Step inputs in op memory, valid until the next begin_step(): the CPU returns `host` itself.
  virtual Status stage(const void* host, size_t bytes, const void** out) = 0;
  // Op memory readable on the host, valid until the next begin_step(): the CPU returns `src` itself.
  virtual Status view(const void* src, size_t bytes, const void** host) = 0;
  virtual void begin_step() = 0;
  // Waits for the ops issued so far and returns the first failure among them (then forgets it).
  virtual Status sync() = 0;
};

inline void BufferFree::operator()(void* p) const {
  if (p && be) be->release(p);
}

// The widest fast kernels a CPU backend may use, where the CPU has them: AVX2/FMA only (name "cpu-avx2"); the
// GEMM's AVX-512VL build ("cpu-avx512"); that, and BF16 weights through AVX-512 BF16 dot products
// ("cpu-avx512bf16"). Each gives the same results bit for bit.
enum class CpuKernels { kAvx2, kAvx512, kAvx512Bf16 };

// reference=true: the plain kernels, single-threaded (the yardstick); else the fast kernels when the CPU has
// AVX2/FMA/F16C (falling back to reference otherwise, with the reason in name()), up to `widest`.
std::unique_ptr<Backend> make_cpu_backend(bool reference, int n_threads, CpuKernels widest);

// What the addon knows of CUDA: whether the CUDA backend was compiled in (nvcc at build time) and whether a
// usable GPU is present. The first call initialises the CUDA runtime; a machine without a driver is fine.
struct CudaInfo {
  bool compiled = false;
  bool usable = false;     // compiled, a device is present and the built code runs on it
  int devices = 0;
  std::string name;        // device 0
  int cc_major = 0, cc_minor = 0, sms = 0;
  double memory_bytes = 0;
  int runtime_version = 0, driver_version = 0;
  std::string error;       // why not usable
};
const CudaInfo& cuda_info();
// The CUDA backend on device 0; EINVAL naming the reason when none is usable. Host helpers use n_threads.
Status make_cuda_backend(int n_threads, std::unique_ptr<Backend>* out);

// device: "cpu", "cuda" or "auto" (cuda when a usable GPU is present, else cpu). reference=true is CPU-only.
Status make_backend(const std::string& device, bool reference, int n_threads, std::unique_ptr<Backend>* out);

}  // namespace lx
