// Shared basics of the native engine: status codes, dtypes and their conversions, small helpers.
// No model, kernel or binding logic lives here.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace lx {

// A native failure that crosses into JavaScript as an Error with `code`.
// EINVAL: the caller's input is bad; ENOMEM: out of memory; EIO: file problem; EINTERNAL: a bug.
struct Status {
  std::string code;  // empty = ok
  std::string message;
  bool ok() const { return code.empty(); }
  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {"EINVAL", std::move(m)}; }
  static Status Io(std::string m) { return {"EIO", std::move(m)}; }
  static Status NoMem(std::string m) { return {"ENOMEM", std::move(m)}; }
  static Status Internal(std::string m) { return {"EINTERNAL", std::move(m)}; }
};

#define LX_TRY(expr)              \
  do {                            \
    ::lx::Status _s = (expr);     \
    if (!_s.ok()) return _s;      \
  } while (0)

enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
  }
  return "?";
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round-to-nearest-even, NaN kept NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  // Branch-free so conversion loops vectorise.
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

// An activation entering a product with BF16 weights, as the AVX-512 BF16 conversion (vcvtneps2bf16) rounds
// it: f32_to_bf16, with f32 subnormals flushed to a signed zero. Every CPU path multiplies BF16 weights by inputs
// rounded this way (as PyTorch's bf16 inference and llama.cpp do), so the paths agree bit for bit.
inline uint16_t bf16_input(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x7f800000u) == 0 ? uint16_t((u >> 16) & 0x8000u) : f32_to_bf16(f);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | (uint32_t(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float load_as_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
  return 0.f;
}

// A weight matrix as it lies in memory (mapped file or owned buffer): W[rows, cols] row-major.
struct Mat {
  const void* data = nullptr;  // [rows, cols] in dtype
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t* row_ptr(int64_t r) const {
    return static_cast<const uint8_t*>(data) + size_t(r) * size_t(cols) * dtype_size(dtype);
  }
};

}  // namespace lx
