// Native token sampling: penalties, temperature, top-k / top-p / typical-p filters, a counter-based RNG per
// sequence (same seed and step → same draw whatever else is in the batch), and raw log-probabilities.
// It reads logits rows; it knows nothing of the model or the batch layout.
#pragma once
#include <cstdint>
#include <vector>

#include "backend.h"

namespace lx {

struct SampleRow {
  const float* logits = nullptr;  // [V] raw model output
  bool sample = true;             // pick a token (false: only logprobs are wanted, e.g. prompt rows)
  bool do_sample = false;         // false: greedy over the processed logits
  float temperature = 1.f, top_p = 1.f, typical_p = 1.f, min_p = 0.f;
  int top_k = 0;
  float repetition_penalty = 1.f, presence_penalty = 0.f, frequency_penalty = 0.f;
  uint64_t seed = 0, step = 0;
  int n_top = 0;        // top-N alternatives wanted
  int32_t target = -1;  // also report the logprob of this token
  const int32_t* pen_ids = nullptr;     // [n_pen] tokens seen in prompt or output
  const int32_t* pen_counts = nullptr;  // [n_pen] times seen in the output (0 = prompt only)
  int n_pen = 0;
  const uint32_t* mask = nullptr;  // [ceil(V/32)] allowed tokens, or null for all
};

struct SampleOut {
  int32_t token = -1;
  float logprob = 0.f;         // raw log-probability of token
  float target_logprob = 0.f;  // raw log-probability of SampleRow::target
  int32_t* top_ids = nullptr;  // [n_top]
  float* top_logprobs = nullptr;
};

// The uniform draw in [0, 1) for (seed, step).
double rng_uniform(uint64_t seed, uint64_t step);

// reference=true: full sorts and double-precision softmax (the yardstick); false: partial selection and the
// backend's softmax.
void sample_row(Backend& be, const SampleRow& r, int V, bool reference, std::vector<float>& work, std::vector<int32_t>& idx,
                SampleOut& out);

}  // namespace lx
