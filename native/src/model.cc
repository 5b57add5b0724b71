// Model loading (mapped safetensors ranges, shape checks, optional dtype conversion), the forward pass of the
// Llama family (Llama, Mistral, Qwen2), paged KV writes, the LoRA pool, and handing rows to the sampler.
// Tensor names and ranges come from the TypeScript loader; this file trusts none of them without checking.
#include "model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <map>
#include <numeric>

namespace lx {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  int32_t exp = int32_t((u >> 23) & 0xff) - 127 + 15;
  uint32_t man = u & 0x7fffffu;
  if (((u >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00u | (man ? 0x200u : 0));
  if (exp >= 31) return uint16_t(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    man |= 0x800000u;
    uint32_t shift = uint32_t(14 - exp);
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) half++;
    return uint16_t(sign | half);
  }
  uint32_t h = sign | (uint32_t(exp) << 10) | (man >> 13);
  uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return uint16_t(h);
}

const char* kTargetNames[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"};

}  // namespace

Model::~Model() {
  for (auto& m : maps_) munmap(m.first, m.second);
}

int Model::d_in(int target) const {
  switch (target) {
    case kO: return cfg_.n_heads * cfg_.head_dim;
    case kDown: return cfg_.intermediate;
    default: return cfg_.hidden;
  }
}

int Model::d_out(int target) const {
  switch (target) {
    case kQ: return cfg_.n_heads * cfg_.head_dim;
    case kK:
    case kV: return cfg_.n_kv * cfg_.head_dim;
    case kGate:
    case kUp: return cfg_.intermediate;
    case kLmHead: return cfg_.vocab;
    default: return cfg_.hidden;
  }
}

Status Model::load(const LoadOptions& opt, std::unique_ptr<Model>* out) {
  std::unique_ptr<Model> m(new Model());
  const ModelConfig& c = opt.cfg;
  m->cfg_ = c;
  if (c.vocab <= 0 || c.hidden <= 0 || c.intermediate <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv <= 0 ||
      c.head_dim <= 0)
    return Status::Invalid("model config has a non-positive dimension (vocab, hidden, intermediate, layers, heads, "
                           "kv heads or head_dim)");
  if (c.n_heads % c.n_kv != 0)
    return Status::Invalid("num_attention_heads " + std::to_string(c.n_heads) + " is not a multiple of num_key_value_heads " +
                           std::to_string(c.n_kv));
  if (c.head_dim % 2 != 0 || int(c.inv_freq.size()) != c.head_dim / 2)
    return Status::Invalid("head_dim " + std::to_string(c.head_dim) + " must be even and match inv_freq length " +
                           std::to_string(c.inv_freq.size()) + "×2");
  if (int(c.window.size()) != c.n_layers) return Status::Invalid("window list must have one entry per layer");
  if (opt.block_size <= 0 || opt.kv_blocks <= 0) return Status::Invalid("kv_blocks and block_size must be positive");
  m->be_ = make_cpu_backend(opt.reference, opt.threads);
  m->reference_ = opt.reference;

  // Map every file once.
  std::vector<size_t> sizes;
  for (const std::string& path : opt.files) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::Io("cannot open weights file " + path + ": " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
      close(fd);
      return Status::Io("cannot stat " + path + ": " + std::strerror(errno));
    }
    size_t size = size_t(st.st_size);
    void* p = size ? mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0) : nullptr;
    close(fd);
    if (size && p == MAP_FAILED) return Status::Io("cannot map " + path + ": " + std::strerror(errno));
    m->maps_.emplace_back(p, size);
    sizes.push_back(size);
  }

  std::map<std::string, const TensorRef*> by_name;
  for (const TensorRef& t : opt.tensors) {
    if (t.file < 0 || t.file >= int(opt.files.size())) return Status::Invalid("tensor " + t.name + " names no file");
    if (t.offset + t.nbytes > sizes[t.file] || t.offset + t.nbytes < t.offset)
      return Status::Invalid("tensor " + t.name + " byte range [" + std::to_string(t.offset) + ", " +
                             std::to_string(t.offset + t.nbytes) + ") lies beyond the end of " + opt.files[t.file] +
                             " (" + std::to_string(sizes[t.file]) + " bytes): truncated file?");
    by_name[t.name] = &t;
  }

  auto find = [&](const std::string& name, std::vector<int64_t> shape, const TensorRef** out_ref) -> Status {
    auto it = by_name.find(name);
    if (it == by_name.end()) return Status::Invalid("weights have no tensor " + name + " (expected shape " + shape_str(shape) + ")");
    const TensorRef* t = it->second;
    if (t->shape != shape)
      return Status::Invalid("tensor " + name + " has shape " + shape_str(t->shape) + ", the config expects " +
                             shape_str(shape) + " (config.json and weights disagree?)");
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    if (uint64_t(numel) * dtype_size(t->dtype) != t->nbytes)
      return Status::Invalid("tensor " + name + " holds " + std::to_string(t->nbytes) + " bytes, " + shape_str(shape) +
                             " " + dtype_name(t->dtype) + " needs " + std::to_string(uint64_t(numel) * dtype_size(t->dtype)));
    *out_ref = t;
    return Status::Ok();
  };
  auto data_of = [&](const TensorRef* t) {
    return static_cast<const void*>(static_cast<const uint8_t*>(m->maps_[t->file].first) + t->offset);
  };
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols, Mat* out_m) -> Status {
    const TensorRef* t;
    LX_TRY(find(name, {rows, cols}, &t));
    Mat mm{data_of(t), t->dtype, rows, cols};
    if (opt.weight_dtype >= 0 && DType(opt.weight_dtype) != t->dtype) {
      DType to = DType(opt.weight_dtype);
      std::vector<uint8_t> buf(size_t(rows * cols) * dtype_size(to));
      for (int64_t i = 0; i < rows * cols; i++) {
        float v = load_as_f32(mm.data, mm.dtype, i);
        if (to == DType::F32) reinterpret_cast<float*>(buf.data())[i] = v;
        else if (to == DType::BF16) reinterpret_cast<uint16_t*>(buf.data())[i] = f32_to_bf16(v);
        else reinterpret_cast<uint16_t*>(buf.data())[i] = f32_to_f16(v);
      }
      m->owned_.push_back(std::move(buf));
      mm = Mat{m->owned_.back().data(), to, rows, cols};
    }
    m->weight_bytes_ += size_t(rows * cols) * dtype_size(mm.dtype);
    *out_m = mm;
    return Status::Ok();
  };
  auto vec = [&](const std::string& name, int64_t n, std::vector<float>* out_v) -> Status {
    const TensorRef* t;
    LX_TRY(find(name, {n}, &t));
    out_v->resize(n);
    for (int64_t i = 0; i < n; i++) (*out_v)[i] = load_as_f32(data_of(t), t->dtype, i);
    m->weight_bytes_ += size_t(n) * dtype_size(t->dtype);
    return Status::Ok();
  };

  const int64_t H = c.hidden, I = c.intermediate, QD = int64_t(c.n_heads) * c.head_dim, KD = int64_t(c.n_kv) * c.head_dim;
  LX_TRY(mat("model.embed_tokens.weight", c.vocab, H, &m->embed_));
  m->layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; l++) {
    Layer& L = m->layers_[l];
    std::string p = "model.layers." + std::to_string(l) + ".";
    LX_TRY(mat(p + "self_attn.q_proj.weight", QD, H, &L.wq));
    LX_TRY(mat(p + "self_attn.k_proj.weight", KD, H, &L.wk));
    LX_TRY(mat(p + "self_attn.v_proj.weight", KD, H, &L.wv));
    LX_TRY(mat(p + "self_attn.o_proj.weight", H, QD, &L.wo));
    LX_TRY(mat(p + "mlp.gate_proj.weight", I, H, &L.wg));
    LX_TRY(mat(p + "mlp.up_proj.weight", I, H, &L.wu));
    LX_TRY(mat(p + "mlp.down_proj.weight", H, I, &L.wd));
    LX_TRY(vec(p + "input_layernorm.weight", H, &L.ln1));
    LX_TRY(vec(p + "post_attention_layernorm.weight", H, &L.ln2));
    if (c.qkv_bias) {
      LX_TRY(vec(p + "self_attn.q_proj.bias", QD, &L.bq));
      LX_TRY(vec(p + "self_attn.k_proj.bias", KD, &L.bk));
      LX_TRY(vec(p + "self_attn.v_proj.bias", KD, &L.bv));
    }
  }
  LX_TRY(vec("model.norm.weight", H, &m->final_norm_));
  if (c.tied) m->lm_head_ = m->embed_;
  else LX_TRY(mat("lm_head.weight", c.vocab, H, &m->lm_head_));

  m->kv_blocks_ = opt.kv_blocks;
  m->block_size_ = opt.block_size;
  const size_t per_layer = size_t(opt.kv_blocks) * c.n_kv * opt.block_size * c.head_dim;
  const int T = m->max_T_ = std::max(1, opt.max_step_tokens);
  const int R = m->max_R_ = std::max(1, opt.max_out_rows);
  try {
    m->kv_.assign(per_layer * 2 * c.n_layers, 0.f);
    m->x_.resize(size_t(T) * H);
    m->xb_.resize(size_t(T) * std::max<int64_t>(H, QD));
    m->q_.resize(size_t(T) * QD);
    m->k_.resize(size_t(T) * KD);
    m->v_.resize(size_t(T) * KD);
    m->att_.resize(size_t(T) * QD);
    m->gate_.resize(size_t(T) * I);
    m->up_.resize(size_t(T) * I);
    m->cos_.resize(size_t(T) * c.head_dim / 2);
    m->sin_.resize(size_t(T) * c.head_dim / 2);
    m->xo_.resize(size_t(R) * H);
    m->logits_.resize(size_t(R) * c.vocab);
  } catch (const std::bad_alloc&) {
    return Status::NoMem("cannot allocate the KV pool (" + std::to_string(per_layer * 2 * c.n_layers * 4) +
                         " bytes) and activations for " + std::to_string(T) + " tokens: lower the KV budget");
  }
  m->lora_.resize(std::max(0, opt.lora_slots));
  m->lora_max_rank_ = opt.lora_max_rank;
  *out = std::move(m);
  return Status::Ok();
}

Status Model::lora_load(int slot, const std::vector<LoraModuleIn>& modules) {
  if (slot < 0 || slot >= int(lora_.size()))
    return Status::Invalid("LoRA slot " + std::to_string(slot) + " out of range [0, " + std::to_string(lora_.size()) + ")");
  size_t floats = 0;
  for (const LoraModuleIn& mi : modules) {
    if (mi.target < 0 || mi.target >= kNumTargets) return Status::Invalid("LoRA target " + std::to_string(mi.target) + " unknown");
    if ((mi.target == kLmHead) != (mi.layer == -1) || mi.layer < -1 || mi.layer >= cfg_.n_layers)
      return Status::Invalid(std::string("LoRA module ") + kTargetNames[mi.target] + " has bad layer " + std::to_string(mi.layer));
    if (mi.rank <= 0 || mi.rank > lora_max_rank_)
      return Status::Invalid("LoRA rank " + std::to_string(mi.rank) + " outside [1, " + std::to_string(lora_max_rank_) + "]");
    floats += size_t(mi.rank) * (d_in(mi.target) + d_out(mi.target));
  }
  LoraSlot s;
  try {
    s.storage.resize(floats);
    s.mods.assign(size_t(cfg_.n_layers) * kNumTargets + 1, LoraMod{});
  } catch (const std::bad_alloc&) {
    return Status::NoMem("cannot allocate " + std::to_string(floats * 4) + " bytes for a LoRA adapter");
  }
  float* p = s.storage.data();
  for (const LoraModuleIn& mi : modules) {
    const int di = d_in(mi.target), dout = d_out(mi.target);
    LoraMod& lm = s.mods[mi.layer < 0 ? s.mods.size() - 1 : size_t(mi.layer) * kNumTargets + mi.target];
    lm.rank = mi.rank;
    lm.scale = mi.scale;
    std::copy_n(mi.a, size_t(mi.rank) * di, p);
    lm.A = p;
    p += size_t(mi.rank) * di;
    for (int j = 0; j < mi.rank; j++)
      for (int o = 0; o < dout; o++) p[size_t(j) * dout + o] = mi.b[size_t(o) * mi.rank + j];
    lm.Bt = p;
    p += size_t(mi.rank) * dout;
  }
  s.used = true;
  lora_[slot] = std::move(s);
  return Status::Ok();
}

Status Model::lora_free(int slot) {
  if (slot < 0 || slot >= int(lora_.size())) return Status::Invalid("LoRA slot " + std::to_string(slot) + " out of range");
  lora_[slot] = LoraSlot{};
  return Status::Ok();
}

Status Model::medusa_load(int slot, const MedusaIn& mi) {
  const int64_t H = cfg_.hidden, V = cfg_.vocab;
  if (slot < 0 || slot > 64) return Status::Invalid("Medusa slot " + std::to_string(slot) + " out of range [0, 64]");
  if (mi.heads <= 0 || mi.heads > 16) return Status::Invalid("Medusa head count " + std::to_string(mi.heads) + " outside [1, 16]");
  MedusaSet s;
  try {
    s.heads = mi.heads;
    s.own_lm_head = mi.own_lm_head;
    s.w.assign(mi.w, mi.w + size_t(mi.heads) * H * H);
    s.b.assign(mi.b, mi.b + size_t(mi.heads) * H);
    if (mi.own_lm_head) s.lm.assign(mi.lm, mi.lm + size_t(mi.heads) * V * H);
  } catch (const std::bad_alloc&) {
    return Status::NoMem("cannot allocate Medusa heads");
  }
  if (size_t(slot) >= medusa_.size()) medusa_.resize(slot + 1);
  medusa_[slot] = std::move(s);
  return Status::Ok();
}

// Drafts for the next step: for each group with a Medusa set, head h's top-k tokens at the hidden state of
// the row that produced the group's last token: state = x + silu(W_h x + b_h), logits = lm_head(state).
void Model::medusa_draft(const StepInput& in, StepOutput* out) {
  const int G = int(in.groups.size()), H = cfg_.hidden, V = cfg_.vocab, K = std::max(1, in.medusa_k);
  int heads = 0;
  for (const auto& g : in.groups)
    if (g.medusa >= 0) heads = std::max(heads, medusa_[g.medusa].heads);
  out->medusa_heads = heads;
  out->medusa_ids.assign(size_t(G) * heads * K, -1);
  if (heads == 0) return;
  std::vector<float> x, t, z, logits;
  std::vector<int32_t> idx;
  for (int g = 0; g < G; g++) {
    const auto& gr = in.groups[g];
    if (gr.medusa < 0) continue;
    const MedusaSet& ms = medusa_[gr.medusa];
    x.assign(xo_.begin() + size_t(out->last_row[g]) * H, xo_.begin() + size_t(out->last_row[g] + 1) * H);
    t.resize(H);
    z.resize(size_t(ms.heads) * H);
    for (int h = 0; h < ms.heads; h++) {
      be_->linear(x.data(), 1, Mat{ms.w.data() + size_t(h) * H * H, DType::F32, H, H}, ms.b.data() + size_t(h) * H, t.data(), false);
      for (int i = 0; i < H; i++) z[size_t(h) * H + i] = x[i] + t[i] / (1.f + std::exp(-t[i]));
    }
    logits.resize(size_t(ms.heads) * V);
    if (ms.own_lm_head)
      for (int h = 0; h < ms.heads; h++)
        be_->linear(z.data() + size_t(h) * H, 1, Mat{ms.lm.data() + size_t(h) * V * H, DType::F32, V, H}, nullptr, logits.data() + size_t(h) * V, false);
    else
      be_->linear(z.data(), ms.heads, lm_head_, nullptr, logits.data(), false);
    for (int h = 0; h < ms.heads; h++) {
      const float* l = logits.data() + size_t(h) * V;
      idx.resize(V);
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + K, idx.end(), [l](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
      for (int k = 0; k < K; k++) out->medusa_ids[(size_t(g) * heads + h) * K + k] = idx[k];
    }
  }
}

size_t Model::lora_bytes(int slot) const {
  return slot >= 0 && slot < int(lora_.size()) ? lora_[slot].storage.size() * sizeof(float) : 0;
}

void Model::lora_mm(const float* x, int T, const Mat& W, const float* bias, int layer, int target,
                    float* y, bool accumulate) {
  be_->linear(x, T, W, bias, y, accumulate);
  if (active_slots_.empty()) return;
  groups_.clear();
  const size_t mi = layer < 0 ? size_t(cfg_.n_layers) * kNumTargets : size_t(layer) * kNumTargets + target;
  for (int s : active_slots_) {
    const LoraMod& m = lora_[s].mods[mi];
    if (m.rank == 0) continue;
    const auto& toks = slot_tokens_[s];
    groups_.push_back(LoraGroup{m.A, m.Bt, m.rank, m.scale, int(toks.size()), toks.data()});
  }
  if (!groups_.empty()) be_->lora(x, d_in(target), y, d_out(target), groups_.data(), int(groups_.size()));
}

Status Model::step(StepInput& in, StepOutput* out) {
  const ModelConfig& c = cfg_;
  const int T = in.T, R = in.R, H = c.hidden, bs = block_size_;
  if (T < 1 || T > max_T_) return Status::Invalid("step has " + std::to_string(T) + " tokens, allowed 1.." + std::to_string(max_T_));
  if (R < 0 || R > max_R_ || R > T)
    return Status::Invalid("step asks logits for " + std::to_string(R) + " rows, allowed 0.." + std::to_string(std::min(max_R_, T)));
  if (int(in.rows.size()) != R) return Status::Invalid("sampling settings for " + std::to_string(in.rows.size()) + " rows, expected " + std::to_string(R));
  std::vector<int32_t> kv_idx(T), kv_len(T), kv_begin(T);
  std::vector<const int32_t*> tables(T);
  for (int t = 0; t < T; t++) {
    const int tok = in.tokens[t];
    if (tok < 0 || tok >= c.vocab)
      return Status::Invalid("token id " + std::to_string(tok) + " at row " + std::to_string(t) + " is out of range [0, " + std::to_string(c.vocab) + ")");
    const int s = in.seq[t];
    if (s < 0 || s >= in.S) return Status::Invalid("row " + std::to_string(t) + " names sequence " + std::to_string(s) + " of " + std::to_string(in.S));
    if (in.positions[t] < 0) return Status::Invalid("negative position at row " + std::to_string(t));
    const int ki = in.kv_index ? in.kv_index[t] : in.positions[t];
    const int n_blocks = in.bt_offsets[s + 1] - in.bt_offsets[s];
    if (ki < 0 || ki / bs >= n_blocks)
      return Status::Invalid("row " + std::to_string(t) + " writes KV index " + std::to_string(ki) + " but its sequence holds " +
                             std::to_string(n_blocks) + " blocks of " + std::to_string(bs));
    if (in.tree_base && in.tree_base[t] > ki + 1) return Status::Invalid("tree base beyond the KV index at row " + std::to_string(t));
    kv_idx[t] = ki;
    kv_len[t] = ki + 1;
    tables[t] = in.bt + in.bt_offsets[s];
    const int a = in.adapter[t];
    if (a < -1 || a >= int(lora_.size()) || (a >= 0 && !lora_[a].used))
      return Status::Invalid("row " + std::to_string(t) + " uses LoRA slot " + std::to_string(a) + ", which holds no adapter");
  }
  for (int s = 0; s < in.S; s++)
    for (int i = in.bt_offsets[s]; i < in.bt_offsets[s + 1]; i++)
      if (in.bt[i] < 0 || in.bt[i] >= kv_blocks_)
        return Status::Invalid("block id " + std::to_string(in.bt[i]) + " out of range [0, " + std::to_string(kv_blocks_) + ")");
  for (int r = 0; r < R; r++)
    if (in.out_rows[r] < 0 || in.out_rows[r] >= T) return Status::Invalid("output row " + std::to_string(in.out_rows[r]) + " out of range");
  for (int i = 0; i < in.n_moves; i++) {
    const int s = in.kv_moves[i * 3], f = in.kv_moves[i * 3 + 1], d = in.kv_moves[i * 3 + 2];
    if (s < 0 || s >= in.S) return Status::Invalid("KV move names sequence " + std::to_string(s));
    const int nb = in.bt_offsets[s + 1] - in.bt_offsets[s];
    if (f < 0 || d < 0 || f / bs >= nb || d / bs >= nb) return Status::Invalid("KV move " + std::to_string(f) + " → " + std::to_string(d) + " is outside its sequence's blocks");
  }
  for (const auto& g : in.groups) {
    if (g.first < 0 || g.n < 1 || g.first + g.n > R) return Status::Invalid("sampling group [" + std::to_string(g.first) + ", +" + std::to_string(g.n) + ") is outside the output rows");
    if (g.medusa >= int(medusa_.size()) || (g.medusa >= 0 && medusa_[g.medusa].heads == 0)) return Status::Invalid("sampling group names Medusa set " + std::to_string(g.medusa) + ", which is not loaded");
    for (int i = 1; i < g.n; i++)
      if (!g.parent || g.parent[i] < 0 || g.parent[i] >= i) return Status::Invalid("speculative node " + std::to_string(i) + " has a bad parent (must be an earlier node)");
  }

  auto group_slots = [&](int n, auto slot_of) {
    active_slots_.clear();
    if (slot_tokens_.size() != lora_.size()) slot_tokens_.assign(lora_.size(), {});
    for (auto& v : slot_tokens_) v.clear();
    for (int i = 0; i < n; i++) {
      int s = slot_of(i);
      if (s < 0) continue;
      if (slot_tokens_[s].empty()) active_slots_.push_back(s);
      slot_tokens_[s].push_back(i);
    }
  };
  group_slots(T, [&](int i) { return in.adapter[i]; });

  // Embeddings and RoPE tables.
  float* x = x_.data();
  for (int t = 0; t < T; t++)
    for (int i = 0; i < H; i++) x[size_t(t) * H + i] = load_as_f32(embed_.data, embed_.dtype, int64_t(in.tokens[t]) * H + i);
  const int half = c.head_dim / 2;
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      float ang = float(in.positions[t]) * c.inv_freq[i];
      cos_[size_t(t) * half + i] = float(std::cos(double(ang)));
      sin_[size_t(t) * half + i] = float(std::sin(double(ang)));
    }

  const int KD = c.n_kv * c.head_dim;
  const size_t per_layer = size_t(kv_blocks_) * c.n_kv * bs * c.head_dim;
  // KV moves first (compaction of accepted speculative tokens): they read slots this step may overwrite.
  for (int i = 0; i < in.n_moves; i++) {
    const int32_t* tbl = in.bt + in.bt_offsets[in.kv_moves[i * 3]];
    const int f = in.kv_moves[i * 3 + 1], d = in.kv_moves[i * 3 + 2];
    for (int l = 0; l < c.n_layers; l++)
      for (int part = 0; part < 2; part++) {
        float* base = kv_.data() + per_layer * (2 * l + part);
        for (int h = 0; h < c.n_kv; h++)
          std::copy_n(base + ((size_t(tbl[f / bs]) * c.n_kv + h) * bs + f % bs) * c.head_dim, c.head_dim,
                      base + ((size_t(tbl[d / bs]) * c.n_kv + h) * bs + d % bs) * c.head_dim);
      }
  }
  AttnArgs aa;
  aa.T = T;
  aa.n_heads = c.n_heads;
  aa.n_kv = c.n_kv;
  aa.head_dim = c.head_dim;
  aa.scale = 1.f / std::sqrt(float(c.head_dim));
  aa.block_size = bs;
  aa.kv_len = kv_len.data();
  aa.kv_begin = kv_begin.data();
  aa.block_table = tables.data();
  aa.tree_base = in.tree_base;
  aa.tree_mask = in.tree_mask;

  for (int l = 0; l < c.n_layers; l++) {
    Layer& L = layers_[l];
    float* kc = kv_.data() + per_layer * 2 * l;
    float* vc = kc + per_layer;
    be_->rmsnorm(x, T, H, L.ln1.data(), c.rms_eps, xb_.data());
    lora_mm(xb_.data(), T, L.wq, L.bq.empty() ? nullptr : L.bq.data(), l, kQ, q_.data(), false);
    lora_mm(xb_.data(), T, L.wk, L.bk.empty() ? nullptr : L.bk.data(), l, kK, k_.data(), false);
    lora_mm(xb_.data(), T, L.wv, L.bv.empty() ? nullptr : L.bv.data(), l, kV, v_.data(), false);
    be_->rope(q_.data(), T, c.n_heads, c.head_dim, cos_.data(), sin_.data());
    be_->rope(k_.data(), T, c.n_kv, c.head_dim, cos_.data(), sin_.data());
    for (int t = 0; t < T; t++) {
      const int j = kv_idx[t];
      const size_t blk = size_t(tables[t][j / bs]);
      for (int h = 0; h < c.n_kv; h++) {
        const size_t dst = ((blk * c.n_kv + h) * bs + j % bs) * c.head_dim;
        std::copy_n(k_.data() + size_t(t) * KD + size_t(h) * c.head_dim, c.head_dim, kc + dst);
        std::copy_n(v_.data() + size_t(t) * KD + size_t(h) * c.head_dim, c.head_dim, vc + dst);
      }
    }
    const int w = c.window[l];
    // The window counts positions (speculative rows sit at later KV slots than their positions).
    for (int t = 0; t < T; t++) kv_begin[t] = w > 0 ? std::max(0, std::min(kv_len[t], in.positions[t] + 1) - w) : 0;
    aa.k_cache = kc;
    aa.v_cache = vc;
    be_->attention(aa, q_.data(), att_.data());
    lora_mm(att_.data(), T, L.wo, nullptr, l, kO, x, true);
    be_->rmsnorm(x, T, H, L.ln2.data(), c.rms_eps, xb_.data());
    lora_mm(xb_.data(), T, L.wg, nullptr, l, kGate, gate_.data(), false);
    lora_mm(xb_.data(), T, L.wu, nullptr, l, kUp, up_.data(), false);
    be_->silu_mul(gate_.data(), up_.data(), int64_t(T) * c.intermediate, gate_.data());
    lora_mm(gate_.data(), T, L.wd, nullptr, l, kDown, x, true);
  }

  // Output rows: final norm, lm_head (with each row's adapter), sampling.
  out->tokens.assign(R, -1);
  out->logprobs.assign(R, 0.f);
  out->target_logprobs.assign(R, 0.f);
  out->top_ids.assign(size_t(R) * in.n_top, -1);
  out->top_logprobs.assign(size_t(R) * in.n_top, 0.f);
  if (R == 0) return Status::Ok();
  for (int r = 0; r < R; r++) std::copy_n(x + size_t(in.out_rows[r]) * H, H, xb_.data() + size_t(r) * H);
  be_->rmsnorm(xb_.data(), R, H, final_norm_.data(), c.rms_eps, xo_.data());
  if (in.want_hidden) out->hidden.assign(xo_.begin(), xo_.begin() + size_t(R) * H);
  group_slots(R, [&](int r) { return in.adapter[in.out_rows[r]]; });
  lora_mm(xo_.data(), R, lm_head_, nullptr, -1, kLmHead, logits_.data(), false);
  if (in.want_logits) out->logits.assign(logits_.begin(), logits_.begin() + size_t(R) * c.vocab);

  const int V = c.vocab;
  for (int r = 0; r < R; r++) in.rows[r].logits = logits_.data() + size_t(r) * V;
  // Rows of speculative trees are sampled by their group's verification, the others one by one.
  std::vector<char> in_tree(R, 0);
  for (const auto& g : in.groups)
    if (g.n > 1)
      for (int i = 0; i < g.n; i++) in_tree[g.first + i] = 1;
  be_->parallel_for(R, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> work;
    thread_local std::vector<int32_t> idx;
    for (int64_t r = r0; r < r1; r++) {
      SampleRow sr = in.rows[r];
      sr.n_top = std::min(sr.n_top, in.n_top);
      if (in_tree[r]) sr.sample = false;  // logprobs and alternatives only
      SampleOut so;
      so.top_ids = out->top_ids.data() + size_t(r) * in.n_top;
      so.top_logprobs = out->top_logprobs.data() + size_t(r) * in.n_top;
      sample_row(*be_, sr, V, reference_, work, idx, so);
      out->tokens[r] = so.token;
      out->logprobs[r] = so.logprob;
      out->target_logprobs[r] = so.target_logprob;
    }
  });
  const int G = int(in.groups.size());
  int max_nodes = 0;
  for (const auto& g : in.groups) max_nodes = std::max(max_nodes, g.n - 1);
  out->max_nodes = max_nodes;
  out->accepted.assign(G, 0);
  out->path.assign(size_t(G) * max_nodes, -1);
  out->path_logprobs.assign(size_t(G) * max_nodes, 0.f);
  out->bonus.assign(G, -1);
  out->bonus_logprobs.assign(G, 0.f);
  out->last_row.assign(G, -1);
  be_->parallel_for(G, [&](int64_t g0, int64_t g1) {
    thread_local std::vector<float> work;
    thread_local std::vector<int32_t> idx;
    std::vector<int32_t> rows, toks;
    for (int64_t g = g0; g < g1; g++) {
      const auto& gr = in.groups[g];
      if (gr.n == 1) {
        out->bonus[g] = out->tokens[gr.first];
        out->bonus_logprobs[g] = out->logprobs[gr.first];
        out->last_row[g] = gr.first;
        continue;
      }
      rows.resize(gr.n);
      toks.resize(gr.n);
      for (int i = 0; i < gr.n; i++) rows[i] = gr.first + i, toks[i] = in.tokens[in.out_rows[gr.first + i]];
      SpecTree t{gr.n, rows.data(), toks.data(), gr.parent};
      SpecResult res;
      verify_tree(*be_, in.rows, V, reference_, t, work, idx, res);
      out->accepted[g] = int(res.path.size());
      for (size_t i = 0; i < res.path.size(); i++) {
        out->path[size_t(g) * max_nodes + i] = res.path[i];
        out->path_logprobs[size_t(g) * max_nodes + i] = res.logprobs[i];
      }
      out->bonus[g] = res.bonus;
      out->bonus_logprobs[g] = res.bonus_logprob;
      out->last_row[g] = res.last_row;
    }
  });
  medusa_draft(in, out);
  return Status::Ok();
}

}  // namespace lx
