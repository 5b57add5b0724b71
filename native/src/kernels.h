// The compute kernels of the CPU backend: a plain reference version of each op (ref::) and a fast one
// (fast::, AVX2/FMA + threads). Fast kernels are tested against the reference; the model never calls either
// directly, only through the Backend interface.
#pragma once
#include <cstdint>

#include "common.h"
#include "threadpool.h"

namespace lx {

// Paged attention input for one layer and one step.
struct AttnArgs {
  int T = 0;                 // tokens in the step
  int n_heads = 0, n_kv = 0, head_dim = 0;
  float scale = 1.f;         // usually 1/sqrt(head_dim)
  int block_size = 16;
  const int32_t* kv_len = nullptr;        // [T] this token attends to logical KV indices [kv_begin, kv_len)
  const int32_t* kv_begin = nullptr;      // [T] first visible index (sliding window), usually 0
  const int32_t* const* block_table = nullptr;  // [T] -> the token's sequence block table
  // Optional tree mask for speculative rows: visible(t, j) for j >= tree_base[t] only if bit set.
  const int32_t* tree_base = nullptr;     // [T] or null
  const uint64_t* tree_mask = nullptr;    // [T] bit i = KV index tree_base[t]+i visible (i < 64)
  const float* k_cache = nullptr;         // [n_blocks, n_kv, block_size, head_dim]
  const float* v_cache = nullptr;         // [n_blocks, n_kv, block_size, head_dim]
};

inline bool attn_visible(const AttnArgs& a, int t, int j) {
  if (!a.tree_base || j < a.tree_base[t]) return true;
  int i = j - a.tree_base[t];
  return i < 64 && ((a.tree_mask[t] >> i) & 1u);
}

// One adapter's share of a LoRA op in a step: y[t] += scale · Bt^T (A · x[t]) for each listed token.
struct LoraGroup {
  const void* A = nullptr;   // [rank, d_in] of dtype
  const void* Bt = nullptr;  // [rank, d_out] of dtype (B transposed at load)
  int rank = 0;
  float scale = 0.f;
  int n_tok = 0;
  const int32_t* tok = nullptr;  // [n_tok] rows of x / y
  DType dtype = DType::F32;      // of A and Bt: F32, or BF16 where Backend::lora_dtype() chose it
};

namespace ref {
// y[T,N] (+)= x[T,K] · W[N,K]^T + bias[N]; accumulate adds to y instead of overwriting.
void linear(const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate);
void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* out);
// Rotate-half RoPE in place on x[T, n_heads, head_dim] with cos/sin [T, head_dim/2].
void rope(float* x, int T, int n_heads, int head_dim, const float* cos, const float* sin);
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
void attention(const AttnArgs& a, const float* q, float* out);  // q,out [T, n_heads, head_dim]
void softmax(float* x, int64_t n);
void lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups);
double logsumexp(const float* x, int64_t n);
}  // namespace ref

namespace fast {
bool supported();  // AVX2 + FMA + F16C at run time
void linear(ThreadPool& pool, const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate);
void rmsnorm(ThreadPool& pool, const float* x, int T, int H, const float* w, float eps, float* out);
void rope(ThreadPool& pool, float* x, int T, int n_heads, int head_dim, const float* cos, const float* sin);
void silu_mul(ThreadPool& pool, const float* gate, const float* up, int64_t n, float* out);
void attention(ThreadPool& pool, const AttnArgs& a, const float* q, float* out);
void softmax(float* x, int64_t n);
void lora(ThreadPool& pool, const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups);
double logsumexp(const float* x, int64_t n);
}  // namespace fast

// fast::linear compiled with AVX-512VL too (more registers, same arithmetic: identical results).
namespace wide {
bool supported();  // fast::supported() + AVX-512F/VL at run time
void linear(ThreadPool& pool, const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate);
void attention(ThreadPool& pool, const AttnArgs& a, const float* q, float* out);
}  // namespace wide

// BF16 weights through AVX-512 BF16 dot products (vdpbf16ps): fewer instructions, the same results as
// fast::linear and wide::linear.
namespace bf16dot {
bool supported();  // wide::supported() + AVX-512 BF16 at run time
void linear(ThreadPool& pool, const float* x, int T, const Mat& W, const float* bias, float* y, bool accumulate);  // W.dtype BF16
}  // namespace bf16dot

}  // namespace lx
