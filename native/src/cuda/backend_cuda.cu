// The CUDA backend: device memory for weights, KV cache and activations, one compute stream, pinned staging
// arenas for step inputs and read-backs, and CUDA errors turned into Status (never an abort). Kernels live in
// the other .cu files; host helpers (softmax, logsumexp, parallel_for for sampling) run on an embedded CPU backend.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "../backend.h"
#include "../sampler.h"
#include "ops.cuh"

namespace lx {
namespace {

Status cuda_status(cudaError_t e, const std::string& what) {
  std::string m = "CUDA " + what + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  return e == cudaErrorMemoryAllocation ? Status::NoMem(m) : Status::Internal(m);
}

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// Pinned host memory (and, for staging, a device twin) handed out in 256-byte aligned pieces until reset().
class Arena {
 public:
  explicit Arena(bool device) : device_(device) {}
  ~Arena() { free_all(); }
  cudaError_t take(size_t bytes, char** h, char** d) {
    bytes = align256(std::max<size_t>(bytes, 1));
    for (Chunk& c : chunks_)
      if (c.size - c.used >= bytes) {
        *h = c.h + c.used, *d = c.d ? c.d + c.used : nullptr;
        c.used += bytes;
        return cudaSuccess;
      }
    Chunk c;
    c.size = std::max<size_t>({bytes, size_t(4) << 20, chunks_.empty() ? 0 : 2 * chunks_.back().size});
    cudaError_t e = cudaHostAlloc(reinterpret_cast<void**>(&c.h), c.size, cudaHostAllocDefault);
    if (e != cudaSuccess) return e;
    if (device_ && (e = cudaMalloc(reinterpret_cast<void**>(&c.d), c.size)) != cudaSuccess) {
      cudaFreeHost(c.h);
      return e;
    }
    c.used = bytes;
    *h = c.h, *d = c.d;
    chunks_.push_back(c);
    return cudaSuccess;
  }
  void reset() {
    for (Chunk& c : chunks_) c.used = 0;
  }
  void free_all() {
    for (Chunk& c : chunks_) {
      cudaFreeHost(c.h);
      if (c.d) cudaFree(c.d);
    }
    chunks_.clear();
  }

 private:
  struct Chunk {
    char *h = nullptr, *d = nullptr;
    size_t size = 0, used = 0;
  };
  bool device_;
  std::vector<Chunk> chunks_;
};

class CudaBackend final : public Backend {
 public:
  static Status create(int n_threads, std::unique_ptr<Backend>* out) {
    const CudaInfo& ci = cuda_info();
    if (!ci.usable) return Status::Invalid("device \"cuda\" is not available: " + ci.error + "; use device \"cpu\"");
    std::unique_ptr<CudaBackend> b(new CudaBackend());
    b->name_ = "cuda-" + ci.name;
    b->sms_ = ci.sms;
    cudaError_t e = cudaSetDevice(b->dev_);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&b->s_, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&b->up_, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cu::gemm_setup();
    if (e != cudaSuccess) return cuda_status(e, "backend set-up");
    b->host_ = make_cpu_backend(false, n_threads, CpuKernels::kAvx512Bf16);
    *out = std::move(b);
    return Status::Ok();
  }

  ~CudaBackend() override {
    cudaSetDevice(dev_);
    if (s_) cudaStreamSynchronize(s_);
    free_pending();
    for (void* p : consts_) cudaFree(p);
    if (ws_.p) cudaFree(ws_.p);
    if (a16_buf_.p) cudaFree(a16_buf_.p);
    if (samp_.p) cudaFree(samp_.p);
    stage_.free_all();
    read_.free_all();
    if (s_) cudaStreamDestroy(s_);
    if (up_) cudaStreamDestroy(up_);
  }

  std::string name() const override { return name_; }
  int threads() const override { return host_->threads(); }

  // Tensor-core linears round x to 16 bits first; q/k/v (and gate/up) share x, so the rounded copy is kept
  // until an op other than linear/lora runs or one of them writes over x.
  void linear(const float* x, int T, const Mat& W, const float* bias, float* y, bool acc) override {
    if (!err_.ok() || T <= 0 || W.rows == 0) return;
    const int N = int(W.rows), K = int(W.cols);
    const cu::GemmPlan p = cu::gemm_plan(T, N, K, W.dtype, W.data, sms_);
    const void* a16 = nullptr;
    if (p.kind != 0) {
      const uint64_t epoch = epoch_.load(std::memory_order_relaxed);
      if (!(a16_.x == x && a16_.n == int64_t(T) * K && a16_.dt == W.dtype && a16_.epoch == epoch)) {
        a16_.x = nullptr;
        void* buf = grow(a16_buf_, p.a16_bytes);
        if (!buf) return;
        check(cu::to_16bit(x, int64_t(T) * K, W.dtype, buf, s_), "linear (x to 16 bits)");
        a16_ = {x, int64_t(T) * K, W.dtype, epoch};
      }
      a16 = a16_buf_.p;
    }
    void* part = p.part_bytes ? grow(ws_, p.part_bytes) : nullptr;
    if (p.part_bytes && !part) return;
    check(cu::gemm(x, a16, T, W.data, W.dtype, N, K, bias, y, acc, p, part, s_), "linear");
    wrote(y, size_t(T) * N * sizeof(float));
  }
  void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* out) override {
    a16_.x = nullptr;
    if (err_.ok()) check(cu::rmsnorm(x, T, H, w, eps, out, s_), "rmsnorm");
  }
  void rope(float* x, int T, int nh, int hd, const float* c, const float* s) override {
    a16_.x = nullptr;
    if (err_.ok()) check(cu::rope(x, T, nh, hd, c, s, s_), "rope");
  }
  void silu_mul(const float* g, const float* u, int64_t n, float* out) override {
    a16_.x = nullptr;
    if (err_.ok()) check(cu::silu_mul(g, u, n, out, s_), "silu_mul");
  }
  void attention(const AttnArgs& a, const float* q, float* out) override {
    a16_.x = nullptr;
    if (!err_.ok()) return;
    if (a.head_dim > 256 || a.head_dim <= 0 || a.n_kv <= 0 || a.n_heads % a.n_kv != 0) {
      err_ = Status::Invalid("CUDA attention supports head_dim up to 256 with n_heads a multiple of n_kv; got head_dim " +
                             std::to_string(a.head_dim));
      return;
    }
    check(cu::attention(a, q, out, s_), "attention");
  }
  void lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n) override {
    if (!err_.ok()) return;
    const size_t floats = cu::lora_ws_floats(g, n);
    if (floats == 0) return;
    float* ws = static_cast<float*>(grow(ws_, floats * sizeof(float)));
    if (!ws) return;
    check(cu::lora(x, d_in, y, d_out, g, n, ws, s_), "lora");
    wrote(y, 0);
  }
  void embed(const int32_t* tokens, int T, const Mat& E, float* x) override {
    a16_.x = nullptr;
    if (err_.ok()) check(cu::embed(tokens, T, E.data, E.dtype, E.cols, x, s_), "embed");
  }
  void copy_rows(float* dst, const int64_t* doff, const float* src, const int64_t* soff, int n, int len) override {
    a16_.x = nullptr;
    if (err_.ok()) check(cu::copy_rows(dst, doff, src, soff, n, len, s_), "copy_rows");
  }
  void add_silu(const float* x, const float* t, int64_t n, float* out) override {
    a16_.x = nullptr;
    if (err_.ok()) check(cu::add_silu(x, t, n, out, s_), "add_silu");
  }

  void softmax(float* x, int64_t n) override { host_->softmax(x, n); }
  double logsumexp(const float* x, int64_t n) override { return host_->logsumexp(x, n); }
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) override { host_->parallel_for(n, fn); }

  // Rows that need no draw (logprob-only, greedy) run on the device with sampler.cc's exact choice rules; the
  // others (temperature draws through top-k/top-p/typical/min-p) read their logits back and run sample_row.
  Status sample(const SampleRow* rows, int n, int V, bool reference, SampleOut* out) override {
    if (!err_.ok()) return take_error();
    std::vector<int> dev, host;
    std::vector<int32_t> sorted;
    for (int i = 0; i < n; i++) {
      const SampleRow& r = rows[i];
      bool ok = (!r.sample || !r.do_sample || r.temperature <= 1e-5f || r.top_k == 1) && r.n_top <= cu::kMaxTop &&
                V <= cu::kMaxGreedyVocab;
      if (ok && r.sample && r.n_pen > 1) {  // the kernel applies each penalty id once: duplicates go to the host
        sorted.assign(r.pen_ids, r.pen_ids + r.n_pen);
        std::sort(sorted.begin(), sorted.end());
        ok = std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end();
      }
      if (r.sample && r.n_bias > 0) ok = false;  // logit bias (rare): the host applies it
      (ok ? dev : host).push_back(i);
    }
    const int words = (V + 31) / 32;
    std::vector<char*> host_logits(host.size());
    for (size_t k = 0; k < host.size(); k++) {  // queued before the device rows' kernel; one wait for all
      char* d;
      cudaError_t e = read_.take(size_t(V) * sizeof(float), &host_logits[k], &d);
      if (e == cudaSuccess) e = cudaMemcpyAsync(host_logits[k], rows[host[k]].logits, size_t(V) * sizeof(float), cudaMemcpyDeviceToHost, s_);
      if (e != cudaSuccess) return cuda_status(e, "read-back of logits for host sampling");
    }
    int32_t* oi_h = nullptr;
    float* of_h = nullptr;
    if (!dev.empty()) {
      std::vector<cu::GreedyRow> gr;
      std::vector<int32_t> pen_ids, pen_counts;
      std::vector<uint32_t> masks;
      for (int i : dev) {
        const SampleRow& r = rows[i];
        cu::GreedyRow g{r.logits, int(pen_ids.size()), r.sample ? r.n_pen : 0, -1, r.repetition_penalty, r.presence_penalty,
                        r.frequency_penalty, r.target, std::max(0, r.n_top), r.sample ? 1 : 0};
        if (r.sample) {
          pen_ids.insert(pen_ids.end(), r.pen_ids, r.pen_ids + r.n_pen);
          pen_counts.insert(pen_counts.end(), r.pen_counts, r.pen_counts + r.n_pen);
          if (r.mask) g.mask_off = int(masks.size()), masks.insert(masks.end(), r.mask, r.mask + words);
        }
        gr.push_back(g);
      }
      const void *grd, *pid, *pcd, *mkd;
      LX_TRY(stage(gr.data(), gr.size() * sizeof(cu::GreedyRow), &grd));
      LX_TRY(stage(pen_ids.data(), pen_ids.size() * 4, &pid));
      LX_TRY(stage(pen_counts.data(), pen_counts.size() * 4, &pcd));
      LX_TRY(stage(masks.data(), masks.size() * 4, &mkd));
      const size_t ni = dev.size() * (1 + cu::kMaxTop), nf = dev.size() * (2 + cu::kMaxTop);
      char* o = static_cast<char*>(grow(samp_, (ni + nf) * 4));
      if (!o) return take_error();
      check(cu::greedy_rows(static_cast<const cu::GreedyRow*>(grd), int(dev.size()), static_cast<const int32_t*>(pid),
                            static_cast<const int32_t*>(pcd), static_cast<const uint32_t*>(mkd), V, reinterpret_cast<int32_t*>(o),
                            reinterpret_cast<float*>(o + ni * 4), s_),
            "sampling");
      const void* ov;
      LX_TRY(view(o, (ni + nf) * 4, &ov));  // waits for the host rows' read-backs too
      oi_h = const_cast<int32_t*>(static_cast<const int32_t*>(ov));
      of_h = reinterpret_cast<float*>(oi_h + ni);
    } else if (!host.empty()) {
      check(cudaStreamSynchronize(s_), "read-back of logits for host sampling");
      if (!err_.ok()) return take_error();
    }
    for (size_t k = 0; k < dev.size(); k++) {
      const int32_t* ri = oi_h + k * (1 + cu::kMaxTop);
      const float* rf = of_h + k * (2 + cu::kMaxTop);
      SampleOut& so = out[dev[k]];
      so.token = ri[0];
      if (ri[0] >= 0) so.logprob = rf[0];
      if (rows[dev[k]].target >= 0 && rows[dev[k]].target < V) so.target_logprob = rf[1];
      for (int j = 0; j < rows[dev[k]].n_top; j++) so.top_ids[j] = ri[1 + j], so.top_logprobs[j] = rf[2 + j];
    }
    if (!host.empty())
      host_->parallel_for(int64_t(host.size()), [&](int64_t k0, int64_t k1) {
        thread_local std::vector<float> work;
        thread_local std::vector<int32_t> idx;
        for (int64_t k = k0; k < k1; k++) {
          SampleRow r = rows[host[k]];
          r.logits = reinterpret_cast<const float*>(host_logits[k]);
          sample_row(*host_, r, V, reference, work, idx, out[host[k]]);
        }
      });
    return Status::Ok();
  }

  // cudaMalloc on this backend's device; when it fails, says how much memory was free.
  Status device_malloc(size_t bytes, const char* what, void** p) {
    cudaSetDevice(dev_);
    cudaError_t e = cudaMalloc(p, std::max<size_t>(bytes, 1));
    if (e == cudaSuccess) return Status::Ok();
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return Status::NoMem("cannot allocate " + std::to_string(bytes) + " bytes of GPU memory" + what + " (" +
                         std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
                         " MiB): " + cudaGetErrorString(e));
  }
  Status alloc(size_t bytes, Buffer* out) override {
    epoch_.fetch_add(1, std::memory_order_relaxed);  // a new buffer may sit where the cached x was (any thread)
    void* p = nullptr;
    LX_TRY(device_malloc(bytes, "", &p));
    cudaError_t e = cudaMemsetAsync(p, 0, bytes, up_);
    if (e == cudaSuccess) e = cudaStreamSynchronize(up_);
    if (e != cudaSuccess) {
      cudaFree(p);
      return cuda_status(e, "memset");
    }
    *out = Buffer(p, BufferFree{this});
    return Status::Ok();
  }
  // Frees wait for the device: deferred to the next begin_step()/sync() so that a thread dropping an adapter
  // does not stall behind a running step.
  void release(void* p) override {
    std::lock_guard<std::mutex> lk(mu_);
    pending_.push_back(p);
  }
  Status upload(void* dst, const void* host, size_t bytes) override {
    if (!bytes) return Status::Ok();
    epoch_.fetch_add(1, std::memory_order_relaxed);
    cudaSetDevice(dev_);
    cudaError_t e = cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, up_);
    if (e == cudaSuccess) e = cudaStreamSynchronize(up_);
    return e == cudaSuccess ? Status::Ok() : cuda_status(e, "upload of " + std::to_string(bytes) + " bytes");
  }
  Status download(void* host, const void* src, size_t bytes) override {
    if (!err_.ok()) return take_error();
    if (!bytes) return Status::Ok();
    cudaError_t e = cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, s_);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s_);
    return e == cudaSuccess ? Status::Ok() : cuda_status(e, "download of " + std::to_string(bytes) + " bytes");
  }
  Status constant(const Mat& host, Mat* out) override {
    const size_t bytes = size_t(host.rows) * size_t(host.cols) * dtype_size(host.dtype);
    void* p = nullptr;
    LX_TRY(device_malloc(bytes, " for weights", &p));
    {
      std::lock_guard<std::mutex> lk(mu_);
      consts_.push_back(p);
    }
    LX_TRY(upload(p, host.data, bytes));
    *out = Mat{p, host.dtype, host.rows, host.cols};
    return Status::Ok();
  }
  bool host_memory() const override { return false; }
  DType lora_dtype(DType) const override { return DType::F32; }
  Status stage(const void* host, size_t bytes, const void** out) override {
    *out = nullptr;
    if (!err_.ok()) return take_error();
    char *h, *d;
    cudaError_t e = stage_.take(bytes, &h, &d);
    if (e == cudaSuccess) {
      if (bytes) std::memcpy(h, host, bytes);
      e = bytes ? cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, s_) : cudaSuccess;
    }
    if (e != cudaSuccess) return cuda_status(e, "staging of " + std::to_string(bytes) + " bytes of step input");
    *out = d;
    return Status::Ok();
  }
  Status view(const void* src, size_t bytes, const void** host) override {
    *host = nullptr;
    if (!err_.ok()) return take_error();
    char *h, *d;
    cudaError_t e = read_.take(bytes, &h, &d);
    if (e == cudaSuccess && bytes) e = cudaMemcpyAsync(h, src, bytes, cudaMemcpyDeviceToHost, s_);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s_);
    if (e != cudaSuccess) return cuda_status(e, "read-back of " + std::to_string(bytes) + " bytes");
    *host = h;
    return Status::Ok();
  }
  void begin_step() override {
    a16_.x = nullptr;
    cudaSetDevice(dev_);
    check(cudaStreamSynchronize(s_), "previous step");
    free_pending();
    stage_.reset();
    read_.reset();
  }
  Status sync() override {
    check(cudaStreamSynchronize(s_), "step");
    free_pending();
    return take_error();
  }

 private:
  CudaBackend() = default;
  void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess && err_.ok()) err_ = cuda_status(e, what);
  }
  Status take_error() {
    Status s = err_;
    err_ = Status::Ok();
    return s;
  }
  // Device scratch that only grows: a16_buf_ (x as 16 bits), ws_ (split-K partials, LoRA shrink output). Ops run
  // in stream order, so one at a time uses each. Growing waits for the stream.
  struct Scratch {
    void* p = nullptr;
    size_t cap = 0;
  };
  void* grow(Scratch& sc, size_t bytes) {
    if (bytes <= sc.cap) return sc.p;
    if (&sc == &a16_buf_) a16_.x = nullptr;
    check(cudaStreamSynchronize(s_), "scratch growth");
    const size_t want = std::max({bytes, 2 * sc.cap, size_t(16) << 20});
    if (sc.p) cudaFree(sc.p);
    sc = Scratch{};
    cudaError_t e = cudaMalloc(&sc.p, want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      sc.p = nullptr;
      if (err_.ok()) err_ = Status::NoMem("cannot allocate " + std::to_string(want) + " bytes of GPU scratch memory");
      return nullptr;
    }
    sc.cap = want;
    return sc.p;
  }
  // An op wrote [p, p + bytes) (bytes 0: somewhere unknown): the cached 16-bit x is stale if that overlaps it.
  void wrote(const void* p, size_t bytes) {
    if (!a16_.x) return;
    const char *a = static_cast<const char*>(p), *b = reinterpret_cast<const char*>(a16_.x);
    if (bytes == 0) {
      if (a != b) return;  // lora writes rows of y only: y != x means no overlap with a distinct x buffer
    } else if (a + bytes <= b || b + a16_.n * 4 <= a) {
      return;
    }
    a16_.x = nullptr;
  }
  void free_pending() {
    std::vector<void*> p;
    {
      std::lock_guard<std::mutex> lk(mu_);
      p.swap(pending_);
    }
    for (void* q : p) cudaFree(q);
  }

  int dev_ = 0, sms_ = 0;
  std::string name_;
  cudaStream_t s_ = nullptr, up_ = nullptr;  // compute; uploads from any thread
  std::unique_ptr<Backend> host_;
  Status err_;  // the first failure since the last sync()
  std::mutex mu_;
  std::vector<void*> consts_, pending_;
  Arena stage_{true}, read_{false};
  Scratch a16_buf_, ws_, samp_;
  // The x whose 16-bit copy sits in a16_buf_; ops on the step thread clear it, memory changes from any thread
  // (alloc, upload: adapter loads run beside steps) bump epoch_.
  struct {
    const float* x = nullptr;  // null: nothing cached
    int64_t n = 0;
    DType dt = DType::BF16;
    uint64_t epoch = 0;
  } a16_;
  std::atomic<uint64_t> epoch_{0};
};

}  // namespace

const CudaInfo& cuda_info() {
  static const CudaInfo info = [] {
    CudaInfo i;
    i.compiled = true;
    cudaRuntimeGetVersion(&i.runtime_version);
    cudaDriverGetVersion(&i.driver_version);
    cudaError_t e = cudaGetDeviceCount(&i.devices);
    if (e != cudaSuccess) {
      cudaGetLastError();
      i.devices = 0;
      i.error = std::string("no usable CUDA driver or GPU (") + cudaGetErrorString(e) + ")";
      return i;
    }
    if (i.devices == 0) {
      i.error = "no CUDA GPU is present";
      return i;
    }
    cudaDeviceProp p{};
    e = cudaGetDeviceProperties(&p, 0);
    if (e == cudaSuccess) {
      i.name = p.name;
      i.cc_major = p.major, i.cc_minor = p.minor, i.sms = p.multiProcessorCount;
      i.memory_bytes = double(p.totalGlobalMem);
      e = cudaSetDevice(0);
    }
    if (e == cudaSuccess) e = cudaFree(nullptr);  // creates the context: fails on a prohibited or broken device
    if (e == cudaSuccess) e = cu::probe_image();
    if (e != cudaSuccess) {
      cudaGetLastError();
      i.error = "GPU 0 (" + i.name + ", compute capability " + std::to_string(i.cc_major) + "." + std::to_string(i.cc_minor) +
                ") cannot run the built kernels (sm_90a code, compute_80 PTX): " + cudaGetErrorString(e);
      return i;
    }
    i.usable = true;
    return i;
  }();
  return info;
}

Status make_cuda_backend(int n_threads, std::unique_ptr<Backend>* out) { return CudaBackend::create(n_threads, out); }

}  // namespace lx
