// Multi-LoRA on CUDA: shrink (s = A·x) and expand (y += scale·Bt^T s) over tiles of one adapter's tokens, in gather
// (BGMV, one token per tile: decode) and segment (SGMV, ≤ 8 tokens per tile: prefill) forms, mixed ranks unpadded.
// Reference: ref::lora in kernels_ref.cc. Adapter storage and grouping belong to the model (f32 A and Bt: the
// CUDA backend's lora_dtype()).
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "ops.cuh"

namespace lx::cu {
namespace {

struct Tile {
  const float* A;        // [rank, d_in]
  const float* Bt;       // [rank, d_out]
  const int32_t* tok;    // [n] rows of x and y
  int rank, n;
  float scale;
  int s_off;             // first row of this tile in the shrink output s
};
constexpr int kMaxTiles = 96;  // per launch: the tile list travels as a kernel parameter (< 4 KB)
struct Tiles {
  Tile t[kMaxTiles];
  int s_stride;  // floats per row of s (the largest rank)
};
static_assert(sizeof(Tiles) + 64 <= 4096, "kernel parameters must stay under 4 KB");

constexpr int kRowsPerCta = 8;  // shrink: one warp per rank row

// s[s_off + e, j] = A[j] · x[tok[e]] for the tile's TOK tokens; blockIdx.y picks 8 rank rows.
template <int TOK, bool VEC>
__global__ void __launch_bounds__(256) shrink_kernel(const Tiles P, const float* __restrict__ x, int d_in, float* __restrict__ s) {
  const Tile& tl = P.t[blockIdx.x];
  const int lane = threadIdx.x & 31, j = blockIdx.y * kRowsPerCta + (threadIdx.x >> 5);
  if (j >= tl.rank) return;
  const int n = tl.n;
  const float* a = tl.A + int64_t(j) * d_in;
  const float* xr[TOK];
#pragma unroll
  for (int e = 0; e < TOK; e++) xr[e] = x + int64_t(tl.tok[min(e, n - 1)]) * d_in;
  float acc[TOK];
#pragma unroll
  for (int e = 0; e < TOK; e++) acc[e] = 0.f;
  if (VEC) {
    // Eight 16-byte loads of A in flight per lane before any use: this kernel streams adapter weights.
    constexpr int kDepth = 8;
    const int n4 = d_in >> 2;
    const float4* a4 = reinterpret_cast<const float4*>(a);
    for (int k0 = lane; k0 < n4; k0 += 32 * kDepth) {
      float4 av[kDepth];
#pragma unroll
      for (int u = 0; u < kDepth; u++) av[u] = k0 + 32 * u < n4 ? __ldg(a4 + k0 + 32 * u) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int u = 0; u < kDepth; u++) {
        const int k = k0 + 32 * u;
        if (k >= n4) break;
#pragma unroll
        for (int e = 0; e < TOK; e++) {
          const float4 xv = __ldg(reinterpret_cast<const float4*>(xr[e]) + k);
          acc[e] += av[u].x * xv.x + av[u].y * xv.y + av[u].z * xv.z + av[u].w * xv.w;
        }
      }
    }
  } else {
    for (int k = lane; k < d_in; k += 32) {
      const float av = __ldg(a + k);
#pragma unroll
      for (int e = 0; e < TOK; e++) acc[e] += av * __ldg(xr[e] + k);
    }
  }
#pragma unroll
  for (int e = 0; e < TOK; e++) {
    const float v = warp_sum(acc[e]);
    if (lane == 0 && e < n) s[int64_t(tl.s_off + e) * P.s_stride + j] = v;
  }
}

// y[tok[e], o..] += scale · Σ_j s[s_off + e, j] · Bt[j, o..]; blockIdx.y picks 256 (×4 with VEC) columns.
template <int TOK, bool VEC>
__global__ void __launch_bounds__(256) expand_kernel(const Tiles P, const float* __restrict__ s, float* __restrict__ y, int d_out) {
  extern __shared__ float ss[];  // [TOK][rank]
  const Tile& tl = P.t[blockIdx.x];
  const int n = tl.n, R = tl.rank;
  for (int i = threadIdx.x; i < TOK * R; i += blockDim.x) {
    const int e = i / R, j = i % R;
    ss[i] = e < n ? s[int64_t(tl.s_off + e) * P.s_stride + j] : 0.f;
  }
  __syncthreads();
  constexpr int W = VEC ? 4 : 1;
  const int o = (blockIdx.y * blockDim.x + threadIdx.x) * W;
  if (o >= d_out) return;
  float acc[TOK][W];
#pragma unroll
  for (int e = 0; e < TOK; e++)
#pragma unroll
    for (int c = 0; c < W; c++) acc[e][c] = 0.f;
#pragma unroll 8
  for (int j = 0; j < R; j++) {
    float b[W];
    if (VEC) {
      const float4 b4 = __ldg(reinterpret_cast<const float4*>(tl.Bt + int64_t(j) * d_out + o));
      b[0] = b4.x, b[W > 1 ? 1 : 0] = b4.y, b[W > 2 ? 2 : 0] = b4.z, b[W > 3 ? 3 : 0] = b4.w;
    } else {
      b[0] = __ldg(tl.Bt + int64_t(j) * d_out + o);
    }
#pragma unroll
    for (int e = 0; e < TOK; e++)
#pragma unroll
      for (int c = 0; c < W; c++) acc[e][c] += ss[e * R + j] * b[c];
  }
#pragma unroll
  for (int e = 0; e < TOK; e++) {
    if (e >= n) break;
    float* yr = y + int64_t(tl.tok[e]) * d_out + o;
    if (VEC) {
      float4 v = *reinterpret_cast<float4*>(yr);
      v.x += tl.scale * acc[e][0], v.y += tl.scale * acc[e][W > 1 ? 1 : 0], v.z += tl.scale * acc[e][W > 2 ? 2 : 0],
          v.w += tl.scale * acc[e][W > 3 ? 3 : 0];
      *reinterpret_cast<float4*>(yr) = v;
    } else {
      yr[0] += tl.scale * acc[e][0];
    }
  }
}

template <int TOK>
cudaError_t run(const std::vector<Tile>& tiles, int max_rank, const float* x, int d_in, float* y, int d_out, float* ws,
                cudaStream_t s) {
  // float4 loads need 16-byte aligned rows of x and A (shrink), of y and Bt (expand).
  bool vin = d_in % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  bool vout = d_out % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  for (const Tile& t : tiles) {
    vin = vin && reinterpret_cast<uintptr_t>(t.A) % 16 == 0;
    vout = vout && reinterpret_cast<uintptr_t>(t.Bt) % 16 == 0;
  }
  Tiles P;
  P.s_stride = max_rank;
  for (size_t c0 = 0; c0 < tiles.size(); c0 += kMaxTiles) {
    const int n = int(std::min<size_t>(kMaxTiles, tiles.size() - c0));
    std::copy_n(tiles.begin() + c0, n, P.t);
    int rank = 0;
    for (int i = 0; i < n; i++) rank = std::max(rank, P.t[i].rank);
    const dim3 g1(unsigned(n), grid_for(rank, kRowsPerCta));
    if (vin) shrink_kernel<TOK, true><<<g1, 256, 0, s>>>(P, x, d_in, ws);
    else shrink_kernel<TOK, false><<<g1, 256, 0, s>>>(P, x, d_in, ws);
    const size_t smem = size_t(TOK) * rank * sizeof(float);
    if (vout) expand_kernel<TOK, true><<<dim3(unsigned(n), grid_for(d_out, 1024)), 256, smem, s>>>(P, ws, y, d_out);
    else expand_kernel<TOK, false><<<dim3(unsigned(n), grid_for(d_out, 256)), 256, smem, s>>>(P, ws, y, d_out);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

size_t lora_ws_floats(const LoraGroup* g, int n_groups) {
  size_t rows = 0;
  int rank = 0;
  for (int i = 0; i < n_groups; i++) rows += size_t(std::max(0, g[i].n_tok)), rank = std::max(rank, g[i].rank);
  return rows * size_t(rank);
}

cudaError_t lora(const float* x, int d_in, float* y, int d_out, const LoraGroup* g, int n_groups, float* ws, cudaStream_t s) {
  int max_tok = 0, max_rank = 0;
  for (int i = 0; i < n_groups; i++)
    if (g[i].rank > 0) max_tok = std::max(max_tok, g[i].n_tok), max_rank = std::max(max_rank, g[i].rank);
  if (max_tok == 0 || d_out <= 0) return cudaSuccess;
  if (max_rank > 1024) return cudaErrorInvalidValue;
  for (int i = 0; i < n_groups; i++)
    if (g[i].dtype != DType::F32) return cudaErrorInvalidValue;  // Backend::lora_dtype() is F32 on CUDA
  const int tok = max_tok <= 2 ? 1 : 8;  // gather form for decode-like batches, segments otherwise
  std::vector<Tile> tiles;
  int s_off = 0;
  for (int i = 0; i < n_groups; i++) {
    if (g[i].rank <= 0) continue;
    for (int i0 = 0; i0 < g[i].n_tok; i0 += tok) {
      const int n = std::min(tok, g[i].n_tok - i0);
      tiles.push_back(Tile{static_cast<const float*>(g[i].A), static_cast<const float*>(g[i].Bt), g[i].tok + i0, g[i].rank, n, g[i].scale, s_off});
      s_off += n;
    }
  }
  return tok == 1 ? run<1>(tiles, max_rank, x, d_in, y, d_out, ws, s) : run<8>(tiles, max_rank, x, d_in, y, d_out, ws, s);
}

}  // namespace lx::cu
