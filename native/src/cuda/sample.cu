// Sampling on CUDA for rows that need no draw: logsumexp, top-N alternatives, target logprob and the greedy token
// after penalties and the allowed-token mask, one CTA per row. Reference: sample_row in sampler.cc; rows that draw
// from a filtered distribution stay on the host (backend_cuda.cu reads their logits back).
#include <climits>

#include "common.cuh"
#include "ops.cuh"

namespace lx::cu {
namespace {

constexpr int kThreads = 1024;

struct Best {
  float v;
  int id;
};
// The order of sampler.cc: larger value first, then lower id; id INT_MAX = none.
__device__ __forceinline__ bool better(const Best& a, const Best& b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

__device__ Best block_best(Best b, Best* sm) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best c{__shfl_xor_sync(kFull, b.v, o), __shfl_xor_sync(kFull, b.id, o)};
    if (better(c, b)) b = c;
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();  // sm may still be read from a previous call
  if (lane == 0) sm[w] = b;
  __syncthreads();
  if (w == 0) {
    b = lane < int(blockDim.x >> 5) ? sm[lane] : Best{-INFINITY, INT_MAX};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      Best c{__shfl_xor_sync(kFull, b.v, o), __shfl_xor_sync(kFull, b.id, o)};
      if (better(c, b)) b = c;
    }
    if (lane == 0) sm[0] = b;
  }
  __syncthreads();
  return sm[0];
}

__device__ double block_sum(double v, double* sm) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sm[w] = v;
  __syncthreads();
  if (w == 0) {
    v = lane < int(blockDim.x >> 5) ? sm[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    if (lane == 0) sm[0] = v;
  }
  __syncthreads();
  return sm[0];
}

__global__ void __launch_bounds__(kThreads) greedy_kernel(const GreedyRow* __restrict__ rows, const int32_t* __restrict__ pen_ids,
                                                          const int32_t* __restrict__ pen_counts, const uint32_t* __restrict__ masks,
                                                          int V, int32_t* __restrict__ out_i, float* __restrict__ out_f) {
  extern __shared__ uint32_t penalized[];  // [ceil(V/32)] bitmap of the row's penalty ids
  __shared__ Best sb[32];
  __shared__ double sd[32];
  const GreedyRow r = rows[blockIdx.x];
  const float* l = r.logits;
  const uint32_t* mask = r.mask_off >= 0 ? masks + r.mask_off : nullptr;
  int32_t* oi = out_i + int64_t(blockIdx.x) * (1 + kMaxTop);
  float* of = out_f + int64_t(blockIdx.x) * (2 + kMaxTop);

  // Raw logsumexp: max, then Σ exp in double.
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, l[i]);
  m = block_best(Best{m, 0}, sb).v;
  double s = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += double(expf(l[i] - m));
  const double lz = double(m) + log(block_sum(s, sd));

  // Top-N alternatives: round k takes the best element strictly after round k-1's in (value desc, id asc).
  Best prev{INFINITY, -1};
  for (int k = 0; k < r.n_top; k++) {
    Best b{-INFINITY, INT_MAX};
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const Best c{l[i], i};
      if ((c.v < prev.v || (c.v == prev.v && c.id > prev.id)) && better(c, b)) b = c;
    }
    prev = block_best(b, sb);
    if (threadIdx.x == 0) {
      oi[1 + k] = prev.id == INT_MAX ? -1 : prev.id;
      of[2 + k] = prev.id == INT_MAX ? 0.f : float(double(prev.v) - lz);
    }
  }

  int token = -1;
  if (r.sample) {
    const int words = (V + 31) >> 5;
    for (int i = threadIdx.x; i < words; i += blockDim.x) penalized[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < r.n_pen; i += blockDim.x) {
      const int id = pen_ids[r.pen_off + i];
      if (id >= 0 && id < V) atomicOr(&penalized[id >> 5], 1u << (id & 31));
    }
    __syncthreads();
    Best b{-INFINITY, INT_MAX};
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      if ((penalized[i >> 5] >> (i & 31)) & 1u) continue;
      if (mask && !((mask[i >> 5] >> (i & 31)) & 1u)) continue;
      const Best c{l[i], i};
      if (c.v != -INFINITY && better(c, b)) b = c;
    }
    // Penalised ids (unique per row: the backend checks), with sampler.cc's arithmetic, uncontracted.
    for (int i = threadIdx.x; i < r.n_pen; i += blockDim.x) {
      const int id = pen_ids[r.pen_off + i];
      if (id < 0 || id >= V) continue;
      if (mask && !((mask[id >> 5] >> (id & 31)) & 1u)) continue;
      float x = l[id];
      if (r.rep != 1.f) x = x > 0 ? __fdiv_rn(x, r.rep) : __fmul_rn(x, r.rep);
      const int cnt = pen_counts[r.pen_off + i];
      if (cnt > 0) x = __fsub_rn(x, __fadd_rn(r.pres, __fmul_rn(r.freq, float(cnt))));
      const Best c{x, id};
      if (c.v != -INFINITY && better(c, b)) b = c;
    }
    b = block_best(b, sb);
    token = b.id == INT_MAX ? 0 : b.id;  // every token masked: sampler.cc picks 0 too
  }
  if (threadIdx.x == 0) {
    oi[0] = token;
    of[0] = token >= 0 ? float(double(l[token]) - lz) : 0.f;
    of[1] = r.target >= 0 && r.target < V ? float(double(l[r.target]) - lz) : 0.f;
  }
}

}  // namespace

cudaError_t greedy_rows(const GreedyRow* rows, int n, const int32_t* pen_ids, const int32_t* pen_counts, const uint32_t* masks, int V,
                        int32_t* out_i, float* out_f, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  const size_t smem = size_t((V + 31) / 32) * 4;
  if (smem > 48 * 1024) return cudaErrorInvalidValue;
  greedy_kernel<<<unsigned(n), kThreads, smem, s>>>(rows, pen_ids, pen_counts, masks, V, out_i, out_f);
  return cudaGetLastError();
}

}  // namespace lx::cu
