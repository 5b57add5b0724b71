// Linear layers on CUDA: a tensor-core GEMM (mma.sync m16n8k16, BF16/F16, f32 accumulate; cp.async multi-stage
// pipeline, ldmatrix fragments) in three tile shapes by M, a split-K reduction, and a plain f32 kernel for F32
// weights or shapes the tensor-core path cannot take. Reference: ref::linear in kernels_ref.cc.
#include <algorithm>

#include "common.cuh"
#include "ops.cuh"

namespace lx::cu {
namespace {

// x (f32) rounded to the weight's 16-bit type: the A operand of the tensor-core kernel.
template <typename T>
__global__ void to_16bit(const float* __restrict__ x, int64_t n, T* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(x[i]);
}

// C[M,N] = A[M,K] · B[N,K]^T over K tiles [z·ktps, (z+1)·ktps). One CTA computes a BM×BN tile with WM×WN
// warps; tiles are visited in groups of 8 M-tiles so that neighbouring CTAs share B in L2. Requires K % 8 == 0
// and 16-byte aligned A and B (cp.async moves 8 elements at a time; out-of-range chunks are zero-filled).
// splits == 1: the epilogue adds bias and (optionally) y; else it writes partials [z, M, N].
template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__(WM* WN * 32)
    gemm_tc(const T* __restrict__ A, const T* __restrict__ B, int M, int N, int K, int ktps, float* __restrict__ part,
            const float* __restrict__ bias, float* __restrict__ y, int accumulate) {
  constexpr int NT = WM * WN * 32, LDS = BK + 8, WTM = BM / WM, WTN = BN / WN, MI = WTM / 16, NI = WTN / 8, CPR = BK / 8;
  static_assert(MI >= 1 && NI % 2 == 0 && BK % 16 == 0, "tile shape");
  extern __shared__ __align__(16) unsigned char smem[];
  T* As = reinterpret_cast<T*>(smem);  // [STAGES][BM][LDS]
  T* Bs = As + STAGES * BM * LDS;      // [STAGES][BN][LDS]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp / WN, wn = warp % WN;

  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
  constexpr int kGroup = 8;
  const int per_group = kGroup * tiles_n, gid = int(blockIdx.x) / per_group, local = int(blockIdx.x) % per_group;
  const int first_m = gid * kGroup, gsize = min(tiles_m - first_m, kGroup);
  const int m0 = (first_m + local % gsize) * BM, n0 = (local / gsize) * BN;
  const int kt_all = (K + BK - 1) / BK, kt0 = int(blockIdx.z) * ktps, nk = max(0, min(kt_all - kt0, ktps));

  auto load = [&](int stage, int kt) {
    const int k0 = kt * BK;
    T* as = As + stage * BM * LDS;
    T* bs = Bs + stage * BN * LDS;
#pragma unroll
    for (int c = tid; c < BM * CPR; c += NT) {
      const int r = c / CPR, kc = (c % CPR) * 8, gm = m0 + r, gk = k0 + kc;
      const bool ok = gm < M && gk < K;
      cp_async16(as + r * LDS + kc, ok ? A + int64_t(gm) * K + gk : A, ok);
    }
#pragma unroll
    for (int c = tid; c < BN * CPR; c += NT) {
      const int r = c / CPR, kc = (c % CPR) * 8, gn = n0 + r, gk = k0 + kc;
      const bool ok = gn < N && gk < K;
      cp_async16(bs + r * LDS + kc, ok ? B + int64_t(gn) * K + gk : B, ok);
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int j = 0; j < NI; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < nk) load(s, kt0 + s);
    cp_async_commit();
  }
  for (int i = 0; i < nk; i++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile i has landed for every thread, and every warp is done with tile i-1's stage
    if (i + STAGES - 1 < nk) load((i + STAGES - 1) % STAGES, kt0 + i + STAGES - 1);
    cp_async_commit();
    const T* as = As + (i % STAGES) * BM * LDS;
    const T* bs = Bs + (i % STAGES) * BN * LDS;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[MI][4], bf[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; mi++)
        ldmatrix_x4(af[mi], as + (wm * WTM + mi * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
      for (int ni = 0; ni < NI; ni += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, bs + (wn * WTN + ni * 8 + (lane & 7) + (lane >> 4) * 8) * LDS + kk + ((lane >> 3) & 1) * 8);
        bf[ni][0] = r[0], bf[ni][1] = r[1], bf[ni + 1][0] = r[2], bf[ni + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < NI; ni++) mma16816<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mi = 0; mi < MI; mi++)
#pragma unroll
    for (int ni = 0; ni < NI; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int r = m0 + wm * WTM + mi * 16 + (lane >> 2) + (e >> 1) * 8, c = n0 + wn * WTN + ni * 8 + (lane & 3) * 2 + (e & 1);
        if (r >= M || c >= N) continue;
        if (part) {
          part[(int64_t(blockIdx.z) * M + r) * N + c] = acc[mi][ni][e];
        } else {
          float v = acc[mi][ni][e];
          if (bias) v += bias[c];
          float* o = y + int64_t(r) * N + c;
          *o = accumulate ? *o + v : v;
        }
      }
}

// y = (accumulate ? y : 0) + Σ_z part[z] + bias, summing the slices in order (deterministic).
__global__ void splitk_reduce(const float* __restrict__ part, int splits, int64_t MN, int N, const float* __restrict__ bias,
                              float* __restrict__ y, int accumulate) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < MN; i += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int z = 0; z < splits; z++) v += part[z * MN + i];
    if (bias) v += bias[i % N];
    y[i] = accumulate ? y[i] + v : v;
  }
}

// The plain kernel: 64×64 tiles, 16-deep K steps, 4×4 outputs per thread, weights converted to f32 on load.
template <typename WT>
__global__ void __launch_bounds__(256) gemm_simt(const float* __restrict__ x, const WT* __restrict__ W, int M, int N, int K,
                                                 const float* __restrict__ bias, float* __restrict__ y, int accumulate) {
  __shared__ float As[16][64 + 4];  // [k][m]
  __shared__ float Bs[16][64 + 4];  // [k][n]
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4, m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
  float c[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += 16) {
    for (int i = threadIdx.x; i < 64 * 16; i += 256) {
      const int r = i >> 4, kk = i & 15, gk = k0 + kk, gm = m0 + r, gn = n0 + r;
      As[kk][r] = gm < M && gk < K ? x[int64_t(gm) * K + gk] : 0.f;
      Bs[kk][r] = gn < N && gk < K ? ld(W, int64_t(gn) * K + gk) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 16; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i], b[i] = Bs[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) c[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m >= M || n >= N) continue;
      float v = c[i][j];
      if (bias) v += bias[n];
      float* o = y + int64_t(m) * N + n;
      *o = accumulate ? *o + v : v;
    }
}

// Tile shapes: {BM, BN, BK, WM, WN, STAGES}.
struct Shape {
  int bm, bn, bk, wm, wn, stages;
  size_t smem() const { return size_t(stages) * (bm + bn) * (bk + 8) * 2; }
};
constexpr Shape kShapes[4] = {{0, 0, 0, 0, 0, 0}, {16, 128, 64, 1, 4, 4}, {64, 128, 32, 2, 4, 4}, {128, 128, 32, 2, 4, 4}};

template <typename T>
void* tc_kernel(int kind) {
  switch (kind) {
    case 1: return reinterpret_cast<void*>(gemm_tc<T, 16, 128, 64, 1, 4, 4>);
    case 2: return reinterpret_cast<void*>(gemm_tc<T, 64, 128, 32, 2, 4, 4>);
    default: return reinterpret_cast<void*>(gemm_tc<T, 128, 128, 32, 2, 4, 4>);
  }
}

template <typename T>
cudaError_t launch_tc(const GemmPlan& p, const T* A, const T* B, int M, int N, int K, float* part, const float* bias, float* y,
                      int accumulate, cudaStream_t s) {
  const Shape& sh = kShapes[p.kind];
  const dim3 grid(unsigned(((M + sh.bm - 1) / sh.bm) * ((N + sh.bn - 1) / sh.bn)), 1, unsigned(p.splits));
  const unsigned threads = unsigned(sh.wm * sh.wn * 32);
  const size_t smem = sh.smem();
  switch (p.kind) {
    case 1: gemm_tc<T, 16, 128, 64, 1, 4, 4><<<grid, threads, smem, s>>>(A, B, M, N, K, p.k_tiles_per_split, part, bias, y, accumulate); break;
    case 2: gemm_tc<T, 64, 128, 32, 2, 4, 4><<<grid, threads, smem, s>>>(A, B, M, N, K, p.k_tiles_per_split, part, bias, y, accumulate); break;
    default: gemm_tc<T, 128, 128, 32, 2, 4, 4><<<grid, threads, smem, s>>>(A, B, M, N, K, p.k_tiles_per_split, part, bias, y, accumulate);
  }
  return cudaGetLastError();
}

}  // namespace

GemmPlan gemm_plan(int M, int N, int K, DType wt, const void* W, int sms) {
  GemmPlan p;
  const bool tc = wt != DType::F32 && K % 8 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 && M > 0 && N > 0;
  if (!tc) return p;
  p.kind = M <= 16 ? 1 : M <= 64 ? 2 : 3;
  const Shape& sh = kShapes[p.kind];
  const int64_t tiles = int64_t((M + sh.bm - 1) / sh.bm) * ((N + sh.bn - 1) / sh.bn);
  const int kt = (K + sh.bk - 1) / sh.bk;
  // Two CTAs fit on a multiprocessor. When the tiles leave slots idle (decode-sized M is bandwidth-bound), split
  // K, each slice keeping at least 2 K tiles, choosing the count whose last wave is fullest.
  const int64_t slots = 2 * int64_t(std::max(sms, 1));
  int splits = 1;
  if (tiles < slots) {
    double best = 0;
    for (int sp = 1; sp <= std::min(16, std::max(1, kt / 2)); sp++) {
      const int64_t total = tiles * sp, waves = (total + slots - 1) / slots;
      const double eff = double(total) / double(waves * slots) - (total < slots ? 0.0 : 0.02 * sp / 16);
      if (eff > best + 1e-9) best = eff, splits = sp;
    }
  }
  p.k_tiles_per_split = (kt + splits - 1) / splits;
  p.splits = (kt + p.k_tiles_per_split - 1) / p.k_tiles_per_split;
  p.a16_bytes = size_t(M) * K * 2;
  p.part_bytes = p.splits > 1 ? size_t(p.splits) * M * N * 4 : 0;
  return p;
}

cudaError_t gemm_setup() {
  for (int kind = 1; kind <= 3; kind++) {
    const int smem = int(kShapes[kind].smem());
    cudaError_t e = cudaFuncSetAttribute(tc_kernel<__nv_bfloat16>(kind), cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e == cudaSuccess) e = cudaFuncSetAttribute(tc_kernel<__half>(kind), cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t to_16bit(const float* x, int64_t n, DType dt, void* a16, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  const unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, 4096));
  if (dt == DType::BF16) to_16bit<<<grid, 256, 0, s>>>(x, n, static_cast<__nv_bfloat16*>(a16));
  else to_16bit<<<grid, 256, 0, s>>>(x, n, static_cast<__half*>(a16));
  return cudaGetLastError();
}

cudaError_t gemm(const float* x, const void* a16, int M, const void* W, DType wt, int N, int K, const float* bias, float* y,
                 bool accumulate, const GemmPlan& p, void* part_ws, cudaStream_t s) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  if (p.kind == 0) {
    const dim3 grid(grid_for(N, 64), grid_for(M, 64));
    switch (wt) {
      case DType::F32: gemm_simt<<<grid, 256, 0, s>>>(x, static_cast<const float*>(W), M, N, K, bias, y, accumulate); break;
      case DType::F16: gemm_simt<<<grid, 256, 0, s>>>(x, static_cast<const __half*>(W), M, N, K, bias, y, accumulate); break;
      case DType::BF16: gemm_simt<<<grid, 256, 0, s>>>(x, static_cast<const __nv_bfloat16*>(W), M, N, K, bias, y, accumulate); break;
    }
    return cudaGetLastError();
  }
  float* part = p.splits > 1 ? static_cast<float*>(part_ws) : nullptr;
  const cudaError_t e = wt == DType::BF16
      ? launch_tc(p, static_cast<const __nv_bfloat16*>(a16), static_cast<const __nv_bfloat16*>(W), M, N, K, part, bias, y, accumulate, s)
      : launch_tc(p, static_cast<const __half*>(a16), static_cast<const __half*>(W), M, N, K, part, bias, y, accumulate, s);
  if (e != cudaSuccess || p.splits == 1) return e;
  const int64_t mn = int64_t(M) * N;
  splitk_reduce<<<unsigned(std::min<int64_t>((mn + 255) / 256, 4096)), 256, 0, s>>>(part, p.splits, mn, N, bias, y, accumulate);
  return cudaGetLastError();
}

}  // namespace lx::cu
