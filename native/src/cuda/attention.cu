// Paged attention on CUDA for a varlen step: every row (a prefill token or a decode token) attends to its own
// KV range through its sequence's block table, with sliding windows and speculative tree masks.
// Reference: ref::attention in kernels_ref.cc. Split-KV (flash-decoding) for very long contexts is not done.
#include <climits>

#include "common.cuh"
#include "ops.cuh"

namespace lx::cu {
namespace {

constexpr int kWarps = 4;   // per CTA; each warp walks its own 32-key chunks with an online softmax
constexpr int kHeads = 8;   // query heads of one KV head handled by a CTA (GQA groups larger than 8 use more CTAs)

// One CTA per (row t, KV head, group of ≤ 8 query heads). In a chunk, lane l scores key c0+l against each head
// (K row read by that lane), the warp updates its running max/sum, then all lanes accumulate P·V with lane l
// owning dims l, l+32, …. The warps' partial results are merged at the end. DPL = dims per lane (hd ≤ 32·DPL).
template <int DPL>
__global__ void __launch_bounds__(kWarps * 32) attn_kernel(AttnArgs a, const float* __restrict__ q, float* __restrict__ out) {
  extern __shared__ float sm[];
  const int hd = a.head_dim;
  float* qs = sm;                          // [kHeads][hd]
  float* ps = qs + kHeads * hd;            // [kWarps][kHeads][32]
  float* ms = ps + kWarps * kHeads * 32;   // [kWarps][kHeads]
  float* ls = ms + kWarps * kHeads;        // [kWarps][kHeads]
  float* os = ls + kWarps * kHeads;        // [kWarps][kHeads][hd]
  const int t = blockIdx.x, kh = blockIdx.y, group = a.n_heads / a.n_kv;
  const int h0 = kh * group + blockIdx.z * kHeads, nh = min(kHeads, group - int(blockIdx.z) * kHeads);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < nh * hd; i += blockDim.x) qs[i] = q[(int64_t(t) * a.n_heads + h0) * hd + i];
  __syncthreads();

  const int L = a.kv_len[t], j0 = a.kv_begin ? a.kv_begin[t] : 0, bs = a.block_size;
  const int32_t* bt = a.block_table[t];
  const int tb = a.tree_base ? a.tree_base[t] : INT_MAX;
  const uint64_t tmask = a.tree_mask ? a.tree_mask[t] : 0;
  const bool vec = (hd & 3) == 0;
  float m[kHeads], l[kHeads], acc[kHeads][DPL];
#pragma unroll
  for (int g = 0; g < kHeads; g++) {
    m[g] = -INFINITY, l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[g][i] = 0.f;
  }
  float* pw = ps + w * kHeads * 32;

  for (int c0 = j0 + w * 32; c0 < L; c0 += kWarps * 32) {
    const int j = c0 + lane;
    bool valid = j < L;
    if (valid && j >= tb) {
      const int i = j - tb;
      valid = i < 64 && ((tmask >> i) & 1u);
    }
    const int64_t row = valid ? ((int64_t(bt[j / bs]) * a.n_kv + kh) * bs + j % bs) * hd : 0;
    float s[kHeads];
#pragma unroll
    for (int g = 0; g < kHeads; g++) s[g] = 0.f;
    if (valid) {
      const float* kr = a.k_cache + row;
      if (vec) {
        for (int d = 0; d < hd; d += 4) {
          const float4 k4 = *reinterpret_cast<const float4*>(kr + d);
#pragma unroll
          for (int g = 0; g < kHeads; g++)
            if (g < nh) {
              const float4 q4 = *reinterpret_cast<const float4*>(qs + g * hd + d);
              s[g] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
            }
        }
      } else {
        for (int d = 0; d < hd; d++) {
          const float kv = kr[d];
#pragma unroll
          for (int g = 0; g < kHeads; g++)
            if (g < nh) s[g] += qs[g * hd + d] * kv;
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kHeads; g++) {
      if (g >= nh) continue;
      const float sc = valid ? s[g] * a.scale : -INFINITY;
      const float nm = fmaxf(m[g], warp_max(sc));
      float p = 0.f, corr = 1.f;
      if (nm != -INFINITY) {
        p = valid ? expf(sc - nm) : 0.f;
        corr = m[g] == -INFINITY ? 0.f : expf(m[g] - nm);
      }
      l[g] = l[g] * corr + warp_sum(p);
#pragma unroll
      for (int i = 0; i < DPL; i++) acc[g][i] *= corr;
      m[g] = nm;
      pw[g * 32 + lane] = p;
    }
    __syncwarp();
    const int n = min(32, L - c0);
    for (int kk = 0; kk < n; kk++) {
      if (!__shfl_sync(kFull, int(valid), kk)) continue;
      const float* vr = a.v_cache + __shfl_sync(kFull, row, kk);
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        const int d = lane + 32 * i;
        if (d < hd) {
          const float vv = vr[d];
#pragma unroll
          for (int g = 0; g < kHeads; g++)
            if (g < nh) acc[g][i] += pw[g * 32 + kk] * vv;
        }
      }
    }
    __syncwarp();
  }

#pragma unroll
  for (int g = 0; g < kHeads; g++) {
    if (g >= nh) continue;
    if (lane == 0) ms[w * kHeads + g] = m[g], ls[w * kHeads + g] = l[g];
#pragma unroll
    for (int i = 0; i < DPL; i++)
      if (lane + 32 * i < hd) os[(w * kHeads + g) * hd + lane + 32 * i] = acc[g][i];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * hd; idx += blockDim.x) {
    const int g = idx / hd, d = idx % hd;
    float mx = -INFINITY;
    for (int ww = 0; ww < kWarps; ww++) mx = fmaxf(mx, ms[ww * kHeads + g]);
    float sum = 0.f, o = 0.f;
    for (int ww = 0; ww < kWarps; ww++) {
      const float mw = ms[ww * kHeads + g];
      if (mw == -INFINITY) continue;
      const float f = expf(mw - mx);
      sum += ls[ww * kHeads + g] * f;
      o += os[(ww * kHeads + g) * hd + d] * f;
    }
    out[(int64_t(t) * a.n_heads + h0 + g) * hd + d] = sum > 0.f ? o / sum : 0.f;
  }
}

template <int DPL>
cudaError_t launch(const AttnArgs& a, const float* q, float* out, cudaStream_t s) {
  const int group = a.n_heads / a.n_kv;
  const size_t smem = size_t(kHeads * a.head_dim + kWarps * kHeads * 32 + 2 * kWarps * kHeads + kWarps * kHeads * a.head_dim) * 4;
  attn_kernel<DPL><<<dim3(unsigned(a.T), unsigned(a.n_kv), unsigned((group + kHeads - 1) / kHeads)), kWarps * 32, smem, s>>>(a, q, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention(const AttnArgs& a, const float* q, float* out, cudaStream_t s) {
  if (a.T <= 0) return cudaSuccess;
  if (a.head_dim <= 32) return launch<1>(a, q, out, s);
  if (a.head_dim <= 64) return launch<2>(a, q, out, s);
  if (a.head_dim <= 128) return launch<4>(a, q, out, s);
  if (a.head_dim <= 256) return launch<8>(a, q, out, s);
  return cudaErrorInvalidValue;
}

}  // namespace lx::cu
