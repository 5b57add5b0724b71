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
  const int32_t* bias_ids = nullptr;  // [n_bias] tokens whose logit is shifted (OpenAI logit_bias)
  const float* bias = nullptr;        // [n_bias] added to those logits
  int n_bias = 0;
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

// A speculative tree to verify. Node 0 is the root (the last committed token); node i > 0 is a drafted token
// whose parent is parent[i] (< i). rows[i] is the output row holding the logits that follow node i.
struct SpecTree {
  int n = 0;
  const int32_t* rows = nullptr;    // [n]
  const int32_t* tokens = nullptr;  // [n]
  const int32_t* parent = nullptr;  // [n], parent[0] = -1
};

struct SpecResult {
  std::vector<int32_t> path;    // accepted nodes, root excluded, in depth order
  std::vector<float> logprobs;  // raw logprob of each accepted token under its parent's row
  int32_t bonus = -1;           // the token after the last accepted node
  float bonus_logprob = 0.f;
  int32_t last_row = -1;        // the row that produced the bonus token
};

// Walks the tree from the root: at each node the processed distribution decides (greedy: the argmax must be a
// child; sampling: children are accepted by exact rejection, the residual gives the bonus token). The output
// has the distribution of non-speculative sampling. Row settings' `step` is the root's; depth is added.
void verify_tree(Backend& be, const std::vector<SampleRow>& rows, int V, bool reference, const SpecTree& t,
                 std::vector<float>& work, std::vector<int32_t>& idx, SpecResult& res);

// reference=true: full sorts and double-precision softmax (the yardstick); false: partial selection and the
// backend's softmax.
void sample_row(Backend& be, const SampleRow& r, int V, bool reference, std::vector<float>& work, std::vector<int32_t>& idx,
                SampleOut& out);

}  // namespace lx
