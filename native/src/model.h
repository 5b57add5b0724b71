// The model: mapped weights, config, paged KV memory, the LoRA pool and one forward pass per engine step.
// It computes only through the Backend interface, in the backend's op memory (host or device, it never asks
// which), and samples through sampler.h on the host; no JavaScript types here.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "common.h"
#include "sampler.h"

namespace lx {

struct ModelConfig {
  int vocab = 0, hidden = 0, intermediate = 0, n_layers = 0, n_heads = 0, n_kv = 0, head_dim = 0;
  float rms_eps = 1e-6f;
  bool tied = false, qkv_bias = false;
  std::vector<float> inv_freq;  // [head_dim/2] RoPE frequencies, scaling already applied
  std::vector<int> window;      // [n_layers] sliding window in tokens, 0 = full attention
};

struct TensorRef {
  std::string name;
  int file = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t offset = 0, nbytes = 0;  // absolute byte range in the file
};

struct LoadOptions {
  ModelConfig cfg;
  std::vector<std::string> files;
  // Files already in memory (tests, benchmarks): used instead of `files` when not empty; the caller keeps
  // them alive for the model's life. TensorRef::file indexes this list then.
  std::vector<std::pair<const void*, size_t>> memory_files;
  std::vector<TensorRef> tensors;
  int kv_blocks = 0, block_size = 16;
  int max_step_tokens = 512, max_out_rows = 64;
  int threads = 0;
  bool reference = false;
  std::string device = "cpu";  // cpu | cuda | auto (see make_backend)
  int weight_dtype = -1;  // -1: as stored; else DType to convert matrices to at load
  // Leave the weights in the files' read-only mappings (page cache shared with other processes, faster load)
  // instead of reading them into memory in huge pages, which the CPU backend does by default: decode streams
  // every weight each step, and through 4 KiB pages it reads ~10% slower. CUDA always uploads from a mapping.
  bool map_weights = false;
  int lora_slots = 0;
  int lora_max_rank = 128;
};

// LoRA target order, shared with the TypeScript side.
enum LoraTarget { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kLmHead, kNumTargets };

struct StepInput {
  int T = 0;
  const int32_t* tokens = nullptr;     // [T]
  const int32_t* positions = nullptr;  // [T] RoPE positions
  const int32_t* kv_index = nullptr;   // [T] logical KV slot written by the token; null = positions
  const int32_t* seq = nullptr;        // [T] index into the step's sequences
  const int32_t* adapter = nullptr;    // [T] LoRA slot, -1 = base model
  const int32_t* tree_base = nullptr;  // [T] or null: speculative tree rows (see AttnArgs)
  const uint64_t* tree_mask = nullptr; // [T]
  int S = 0;
  const int32_t* bt_offsets = nullptr;  // [S+1] into bt
  const int32_t* bt = nullptr;          // block ids of all sequences, flattened
  int R = 0;
  const int32_t* out_rows = nullptr;  // [R] rows that get logits
  std::vector<SampleRow> rows;        // [R] sampling settings (logits pointers filled by the model)
  int n_top = 0;                      // top alternatives per row in the output
  bool want_logits = false;
  bool want_hidden = false;           // final-normed hidden states of out rows
  const int32_t* block_copies = nullptr;  // [n_copies, 2]: (source block, destination block), applied first
  int n_copies = 0;
  const int32_t* kv_moves = nullptr;  // [n_moves, 3]: (sequence, from KV index, to KV index), applied next
  int n_moves = 0;
  // Sampling groups: every sampled row belongs to one. A group of n > 1 is a speculative tree over out rows
  // [first, first+n) (node 0 the root) verified together; medusa >= 0 drafts the next tree with that set.
  struct Group {
    int first = 0, n = 1, medusa = -1;
    const int32_t* parent = nullptr;  // [n]
  };
  std::vector<Group> groups;
  int medusa_k = 1;  // candidates per head
};

struct StepOutput {
  std::vector<int32_t> tokens;        // [R]
  std::vector<float> logprobs;        // [R]
  std::vector<float> target_logprobs; // [R]
  std::vector<int32_t> top_ids;       // [R, n_top]
  std::vector<float> top_logprobs;    // [R, n_top]
  std::vector<float> logits;          // [R, vocab] when asked
  std::vector<float> hidden;          // [R, hidden] when asked
  // Per group (see StepInput::Group); max_nodes = the largest group's n - 1.
  int max_nodes = 0;
  std::vector<int32_t> accepted;      // [G] nodes accepted (0 for plain rows)
  std::vector<int32_t> path;          // [G, max_nodes] accepted node indices
  std::vector<float> path_logprobs;   // [G, max_nodes]
  std::vector<int32_t> bonus;         // [G] the next token (plain rows: the sampled token)
  std::vector<float> bonus_logprobs;  // [G]
  std::vector<int32_t> last_row;      // [G] out row the bonus came from
  int medusa_heads = 0;               // largest head count used this step
  std::vector<int32_t> medusa_ids;    // [G, medusa_heads, medusa_k], -1 where none
  double medusa_micros = 0;           // of the step's time, the Medusa heads' (drafting the next step)
};

struct MedusaIn {
  int heads = 0;
  bool own_lm_head = false;   // version 1: each head has its own output projection
  const float* w = nullptr;   // [heads, hidden, hidden]
  const float* b = nullptr;   // [heads, hidden]
  const float* lm = nullptr;  // [heads, vocab, hidden] when own_lm_head
};

struct LoraModuleIn {
  int layer = -1;  // -1 for lm_head
  int target = 0;  // LoraTarget
  int rank = 0;
  float scale = 0.f;
  const float* a = nullptr;  // [rank, d_in]
  const float* b = nullptr;  // [d_out, rank]
};

class Model {
 public:
  ~Model();
  static Status load(const LoadOptions& opt, std::unique_ptr<Model>* out);
  Status step(StepInput& in, StepOutput* out);

  Status lora_load(int slot, const std::vector<LoraModuleIn>& modules);
  Status medusa_load(int slot, const MedusaIn& m);
  Status lora_free(int slot);
  size_t lora_bytes(int slot) const;

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return *be_; }
  int kv_blocks() const { return kv_blocks_; }
  int block_size() const { return block_size_; }
  size_t kv_bytes() const { return kv_bytes_; }
  size_t weight_bytes() const { return weight_bytes_; }
  // Whether the weights were read into memory (huge pages) rather than left in file mappings.
  bool weights_in_memory() const { return weights_in_memory_; }
  // Bytes per stored LoRA factor element (Backend::lora_dtype of the base weights).
  size_t lora_element_bytes() const { return dtype_size(be_->lora_dtype(lm_head_.dtype)); }
  int max_step_tokens() const { return max_T_; }
  int max_out_rows() const { return max_R_; }

 private:
  Model() = default;
  struct Layer {
    Mat wq, wk, wv, wo, wg, wu, wd;            // op memory
    std::vector<float> bq, bk, bv, ln1, ln2;  // owned f32 copies of small vectors (host)
    const float *bq_p = nullptr, *bk_p = nullptr, *bv_p = nullptr, *ln1_p = nullptr, *ln2_p = nullptr;  // op memory
  };
  struct LoraMod {
    int rank = 0;
    float scale = 0.f;
    const void* A = nullptr;   // [rank, d_in] op memory, of the slot's dtype
    const void* Bt = nullptr;  // [rank, d_out] op memory, of the slot's dtype
  };
  struct LoraSlot {
    bool used = false;
    Buffer storage;  // op memory: every module's A then Bt
    DType dtype = DType::F32;  // of storage: Backend::lora_dtype() of the base weights
    size_t bytes = 0;
    std::vector<LoraMod> mods;  // [n_layers * kNumTargets + 1]; the last is lm_head
  };

  void lora_mm(const float* x, int T, const Mat& W, const float* bias, int layer, int target,
               float* y, bool accumulate);
  int d_in(int target) const;
  int d_out(int target) const;
  template <typename T>
  Status stage(const T* host, size_t n, const T** out) {
    const void* p;
    LX_TRY(be_->stage(host, n * sizeof(T), &p));
    *out = static_cast<const T*>(p);
    return Status::Ok();
  }

  ModelConfig cfg_;
  std::unique_ptr<Backend> be_;  // declared before every Buffer: it outlives them
  bool reference_ = false;
  std::vector<std::pair<void*, size_t>> maps_;  // the weight files: mapped, or read into anonymous memory
  std::vector<std::vector<uint8_t>> owned_;     // converted matrices (host)
  size_t weight_bytes_ = 0;
  bool weights_in_memory_ = false;
  Mat embed_, lm_head_;  // op memory
  std::vector<float> final_norm_;
  const float* final_norm_p_ = nullptr;  // op memory
  std::vector<Layer> layers_;
  int kv_blocks_ = 0, block_size_ = 16;
  Buffer kv_;  // per layer: K [n_blocks, n_kv, bs, hd] then V, layers back to back
  size_t kv_bytes_ = 0;
  int max_T_ = 0, max_R_ = 0;
  Buffer x_, xb_, q_, k_, v_, att_, gate_, up_, xo_, logits_;  // op memory activations
  std::vector<float> cos_, sin_;                                // host, staged per step
  static constexpr int kMedusaRows = 64;  // Medusa scratch rows: (groups drafting together) × heads
  struct MedusaSet {
    int heads = 0;
    bool own_lm_head = false;
    Buffer w, b, lm;  // op memory [heads, H, H], [heads, H], [heads, V, H]
  };
  std::vector<MedusaSet> medusa_;  // slots, grown on load
  Buffer med_x_, med_t_, med_z_, med_logits_;  // op memory: [kMedusaRows, H] ×3, [kMedusaRows, V]
  Status medusa_draft(const StepInput& in, StepOutput* out);
  std::vector<LoraSlot> lora_;
  int lora_max_rank_ = 0;
  std::vector<std::vector<int32_t>> slot_tokens_;  // per step: tokens of each active slot
  std::vector<int> active_slots_;
  std::vector<int32_t> lora_tok_;                  // the active slots' tokens back to back (host)
  std::vector<const int32_t*> slot_tok_;           // per slot: its tokens, staged
  std::vector<LoraGroup> groups_;
};

}  // namespace lx
