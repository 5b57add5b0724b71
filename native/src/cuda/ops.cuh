// Host-side launchers of the CUDA kernels, one per backend op: device pointers in, work queued on a stream,
// the launch error out. Each op's CPU yardstick is its ref:: twin in kernels_ref.cc (or the CPU backend's
// loop for embed/copy_rows/add_silu). Memory, errors-as-Status and op choice live in backend_cuda.cu.
#pragma once
#include <cuda_runtime.h>

#include "../common.h"
#include "../kernels.h"

namespace lx::cu {

cudaError_t embed(const int32_t* tokens, int T, const void* E, DType dt, int64_t H, float* x, cudaStream_t s);
cudaError_t rmsnorm(const float* x, int T, int H, const float* w, float eps, float* out, cudaStream_t s);
cudaError_t rope(float* x, int T, int n_heads, int head_dim, const float* cos, const float* sin, cudaStream_t s);
cudaError_t silu_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t s);
cudaError_t add_silu(const float* x, const float* t, int64_t n, float* out, cudaStream_t s);
cudaError_t copy_rows(float* dst, const int64_t* dst_off, const float* src, const int64_t* src_off, int n, int len,
                      cudaStream_t s);

// y[M,N] (+)= x[M,K] · W[N,K]^T + bias. BF16/F16 weights with K % 8 == 0 and 16-byte aligned W run on tensor
// cores: x is first rounded to the weight's type (to_16bit, into a16; callers may reuse a16 for several weights
// sharing x), f32 accumulation, split-K when the grid would leave multiprocessors idle. Anything else runs on a
// plain f32 kernel (no a16, no workspace).
struct GemmPlan {
  int kind = 0;    // 0 f32 SIMT, 1 tensor cores M ≤ 16, 2 M ≤ 64, 3 larger M
  int splits = 1;  // K slices, summed by a second kernel in a fixed order (deterministic)
  int k_tiles_per_split = 0;
  size_t a16_bytes = 0;   // x as 16-bit
  size_t part_bytes = 0;  // split partials
};
GemmPlan gemm_plan(int M, int N, int K, DType wt, const void* W, int sms);
cudaError_t gemm_setup();  // once per device: shared-memory limits of the tensor-core kernels
cudaError_t to_16bit(const float* x, int64_t n, DType dt, void* a16, cudaStream_t s);
cudaError_t gemm(const float* x, const void* a16, int M, const void* W, DType wt, int N, int K, const float* bias, float* y,
                 bool accumulate, const GemmPlan& plan, void* part, cudaStream_t s);

// Paged attention over a varlen batch (prefill chunks and decode rows alike), head_dim ≤ 256.
cudaError_t attention(const AttnArgs& a, const float* q, float* out, cudaStream_t s);

// LoRA over groups of tokens (device pointers in each group): shrink s = A·x then expand y += scale·Bt^T s.
// Decode-like batches (≤ 2 tokens per adapter) use the gather form (BGMV: one token per tile), others the
// segment form (SGMV: tiles of up to 8 tokens of one adapter). ws holds lora_ws_floats() floats.
size_t lora_ws_floats(const LoraGroup* g, int n_groups);
cudaError_t lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups, float* ws, cudaStream_t s);

// Rows sampled without a draw (greedy or logprob-only), one CTA each: out_i [n, 1 + kMaxTop] = token (-1 when
// not sampling), top ids; out_f [n, 2 + kMaxTop] = token logprob, target logprob, top logprobs. Penalty ids of
// a row must be unique (sampler.cc applies duplicates twice); V ≤ 393216 (the penalty bitmap lives in shared memory).
constexpr int kMaxTop = 64;
constexpr int kMaxGreedyVocab = 48 * 1024 * 8;
struct GreedyRow {
  const float* logits;  // [V] device
  int pen_off, n_pen;   // into pen_ids / pen_counts
  int mask_off;         // word offset into masks, -1 = all allowed
  float rep, pres, freq;
  int target;           // -1 = none
  int n_top;            // ≤ kMaxTop
  int sample;           // 1: pick the greedy token
};
cudaError_t greedy_rows(const GreedyRow* rows, int n, const int32_t* pen_ids, const int32_t* pen_counts, const uint32_t* masks, int V,
                        int32_t* out_i, float* out_f, cudaStream_t s);

// The kernel image check: cudaSuccess when the built code runs on the current device.
cudaError_t probe_image();

}  // namespace lx::cu
