// Model loading (safetensors ranges read into memory or mapped, shape checks, optional dtype conversion), the forward pass of the
// Llama family (Llama, Mistral, Qwen2), paged KV writes, the LoRA pool, and handing rows to the sampler.
// Tensor names and ranges come from the TypeScript loader; this file trusts none of them without checking.
#include "model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <map>
#include <thread>

#include "fileread.h"
#include "threadpool.h"

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
  LX_TRY(make_backend(opt.device, opt.reference, opt.threads, &m->be_));
  m->reference_ = opt.reference;
  Backend& be = *m->be_;

  // Each file once: read into huge-page memory on the CPU backend when used as stored (see
  // LoadOptions::map_weights), else mapped; or the caller's in-memory files. Weights that would leave less
  // than kSpareBytes of the memory available now are mapped instead: the page cache can still evict them, a
  // private copy could only be swapped out or get the process killed.
  bool read_in = be.host_memory() && !opt.map_weights && opt.weight_dtype < 0 && opt.memory_files.empty();
  if (read_in) {
    constexpr size_t kSpareBytes = size_t(1) << 30;
    size_t total = 0;
    for (const std::string& path : opt.files) {
      struct stat st;
      if (stat(path.c_str(), &st) == 0) total += size_t(st.st_size);
    }
    read_in = total + kSpareBytes <= available_memory_bytes();
  }
  m->weights_in_memory_ = read_in;
  std::vector<size_t> sizes;
  std::vector<const void*> bases;
  for (const auto& mf : opt.memory_files) bases.push_back(mf.first), sizes.push_back(mf.second);
  for (const std::string& path : opt.memory_files.empty() ? opt.files : std::vector<std::string>{}) {
    if (read_in) {
      FileBytes fb;
      LX_TRY(read_whole_file(path, true, &fb));
      m->maps_.emplace_back(fb.data, fb.mapped);
      bases.push_back(fb.data);
      sizes.push_back(fb.size);
      continue;
    }
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
    bases.push_back(p);
    sizes.push_back(size);
  }
  const std::string kWhere = opt.memory_files.empty() ? "" : "memory file ";

  std::map<std::string, const TensorRef*> by_name;
  for (const TensorRef& t : opt.tensors) {
    if (t.file < 0 || t.file >= int(sizes.size())) return Status::Invalid("tensor " + t.name + " names no file");
    if (t.offset + t.nbytes > sizes[t.file] || t.offset + t.nbytes < t.offset)
      return Status::Invalid("tensor " + t.name + " byte range [" + std::to_string(t.offset) + ", " +
                             std::to_string(t.offset + t.nbytes) + ") lies beyond the end of " +
                             (kWhere.empty() ? opt.files[t.file] : kWhere + std::to_string(t.file)) +
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
    return static_cast<const void*>(static_cast<const uint8_t*>(bases[t->file]) + t->offset);
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
    return be.constant(mm, out_m);
  };
  auto vec = [&](const std::string& name, int64_t n, std::vector<float>* out_v) -> Status {
    const TensorRef* t;
    LX_TRY(find(name, {n}, &t));
    out_v->resize(n);
    for (int64_t i = 0; i < n; i++) (*out_v)[i] = load_as_f32(data_of(t), t->dtype, i);
    m->weight_bytes_ += size_t(n) * dtype_size(t->dtype);
    return Status::Ok();
  };
  // A small host vector's op-memory twin (norm weights, biases); empty stays null.
  auto vec_const = [&](const std::vector<float>& v, const float** out_p) -> Status {
    *out_p = nullptr;
    if (v.empty()) return Status::Ok();
    Mat cm;
    LX_TRY(be.constant(Mat{v.data(), DType::F32, 1, int64_t(v.size())}, &cm));
    *out_p = static_cast<const float*>(cm.data);
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
    LX_TRY(vec_const(L.ln1, &L.ln1_p));
    LX_TRY(vec_const(L.ln2, &L.ln2_p));
    LX_TRY(vec_const(L.bq, &L.bq_p));
    LX_TRY(vec_const(L.bk, &L.bk_p));
    LX_TRY(vec_const(L.bv, &L.bv_p));
  }
  LX_TRY(vec("model.norm.weight", H, &m->final_norm_));
  LX_TRY(vec_const(m->final_norm_, &m->final_norm_p_));
  if (c.tied) m->lm_head_ = m->embed_;
  else LX_TRY(mat("lm_head.weight", c.vocab, H, &m->lm_head_));

  m->kv_blocks_ = opt.kv_blocks;
  m->block_size_ = opt.block_size;
  const size_t per_layer = size_t(opt.kv_blocks) * c.n_kv * opt.block_size * c.head_dim;
  const int T = m->max_T_ = std::max(1, opt.max_step_tokens);
  const int R = m->max_R_ = std::max(1, opt.max_out_rows);
  const size_t kv_bytes = per_layer * 2 * c.n_layers * sizeof(float);
  auto floats = [&](size_t n, Buffer* b) { return be.alloc(n * sizeof(float), b); };
  Status st = floats(per_layer * 2 * c.n_layers, &m->kv_);
  for (auto [n, b] : {std::pair{size_t(T) * H, &m->x_}, {size_t(T) * std::max<int64_t>(H, QD), &m->xb_}, {size_t(T) * QD, &m->q_},
                      {size_t(T) * KD, &m->k_}, {size_t(T) * KD, &m->v_}, {size_t(T) * QD, &m->att_}, {size_t(T) * I, &m->gate_},
                      {size_t(T) * I, &m->up_}, {size_t(R) * H, &m->xo_}, {size_t(R) * c.vocab, &m->logits_},
                      {size_t(kMedusaRows) * H, &m->med_x_}, {size_t(kMedusaRows) * H, &m->med_t_},
                      {size_t(kMedusaRows) * H, &m->med_z_}, {size_t(kMedusaRows) * c.vocab, &m->med_logits_}})
    if (st.ok()) st = floats(n, b);
  if (!st.ok())
    return Status::NoMem("cannot allocate the KV pool (" + std::to_string(kv_bytes) + " bytes) and activations for " +
                         std::to_string(T) + " tokens on " + be.name() + ": lower the KV budget (" + st.message + ")");
  m->kv_bytes_ = kv_bytes;
  m->cos_.resize(size_t(T) * c.head_dim / 2);
  m->sin_.resize(size_t(T) * c.head_dim / 2);
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
  s.dtype = be_->lora_dtype(lm_head_.dtype);
  const size_t esz = dtype_size(s.dtype), bytes = floats * esz;
  Status st = be_->alloc(bytes, &s.storage);
  if (!st.ok()) return Status::NoMem("cannot allocate " + std::to_string(bytes) + " bytes for a LoRA adapter: " + st.message);
  // Host op memory (CPU) is filled in place; a device's goes through host staging and one upload. Filling in
  // place halves the fresh pages touched and drops a copy of the whole adapter (cold loads are page-fault bound).
  std::unique_ptr<uint8_t[]> staging;  // not zero-filled: every element is written below
  try {
    if (!be_->host_memory()) staging.reset(new uint8_t[bytes]);
    s.mods.assign(size_t(cfg_.n_layers) * kNumTargets + 1, LoraMod{});
  } catch (const std::bad_alloc&) {
    return Status::NoMem("cannot allocate " + std::to_string(bytes) + " bytes for a LoRA adapter");
  }
  uint8_t* const host = staging ? staging.get() : buf<uint8_t>(s.storage);
  const uint8_t* dev = buf<uint8_t>(s.storage);
  // Element runs converted in plain loops the compiler vectorises (a cold load converts millions of elements).
  auto put_run = [&](size_t at, const float* src, size_t n) {
    if (s.dtype == DType::BF16) {
      uint16_t* d = reinterpret_cast<uint16_t*>(host) + at;
      for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else {
      std::memcpy(reinterpret_cast<float*>(host) + at, src, n * sizeof(float));
    }
  };
  // Where each module's A and Bt start (elements), so that modules convert independently.
  std::vector<size_t> start(modules.size() + 1, 0);
  for (size_t m = 0; m < modules.size(); m++)
    start[m + 1] = start[m] + size_t(modules[m].rank) * (d_in(modules[m].target) + d_out(modules[m].target));
  for (size_t m = 0; m < modules.size(); m++) {
    const LoraModuleIn& mi = modules[m];
    LoraMod& lm = s.mods[mi.layer < 0 ? s.mods.size() - 1 : size_t(mi.layer) * kNumTargets + mi.target];
    lm.rank = mi.rank;
    lm.scale = mi.scale;
    lm.A = dev + start[m] * esz;
    lm.Bt = dev + (start[m] + size_t(mi.rank) * d_in(mi.target)) * esz;
  }
  // Each thread's transpose tile is allocated here, before any thread starts: nothing below may throw while a
  // helper thread runs (an exception would reach a joinable std::thread and abort the process).
  std::vector<float> tiles[2];
  try {
    for (auto& t : tiles) t.resize(size_t(lora_max_rank_) * 64);
  } catch (const std::bad_alloc&) {
    return Status::NoMem("cannot allocate the LoRA transpose buffers");
  }
  auto convert = [&](size_t m0, size_t m1, float* tile) noexcept {
    for (size_t m = m0; m < m1; m++) {
      const LoraModuleIn& mi = modules[m];
      const int di = d_in(mi.target), dout = d_out(mi.target), r = mi.rank;
      put_run(start[m], mi.a, size_t(r) * di);
      // B [dout, rank] → Bt [rank, dout], 64 outputs at a time: transposed into an f32 tile that stays in
      // cache, then each of its rank rows converted as one run.
      const size_t at = start[m] + size_t(r) * di;
      for (int o0 = 0; o0 < dout; o0 += 64) {
        const int n = std::min(dout, o0 + 64) - o0;
        for (int o = 0; o < n; o++)
          for (int j = 0; j < r; j++) tile[size_t(j) * 64 + o] = mi.b[size_t(o0 + o) * r + j];
        for (int j = 0; j < r; j++) put_run(at + size_t(j) * dout + o0, tile + size_t(j) * 64, n);
      }
    }
  };
  // Large adapters convert on two threads (this worker and one helper), split by elements: a cold load is
  // page-fault and conversion bound, and the step thread pool may be busy with a step meanwhile.
  size_t split = modules.size();
  if (floats >= (size_t(1) << 18) && std::thread::hardware_concurrency() > 1)
    split = size_t(std::lower_bound(start.begin(), start.end(), floats / 2) - start.begin());
  if (split < modules.size())
    run_beside([&] { convert(0, split, tiles[0].data()); }, [&] { convert(split, modules.size(), tiles[1].data()); });
  else
    convert(0, split, tiles[0].data());
  if (staging) LX_TRY(be_->upload(s.storage.get(), staging.get(), bytes));
  s.bytes = bytes;
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
  static_assert(kMedusaRows >= 16, "the scratch buffers hold every head of one group");
  MedusaSet s;
  s.heads = mi.heads;
  s.own_lm_head = mi.own_lm_head;
  auto copy = [&](const float* src, size_t n, Buffer* b) -> Status {
    Status st = be_->alloc(n * sizeof(float), b);
    if (!st.ok()) return Status::NoMem("cannot allocate Medusa heads: " + st.message);
    return be_->upload(b->get(), src, n * sizeof(float));
  };
  LX_TRY(copy(mi.w, size_t(mi.heads) * H * H, &s.w));
  LX_TRY(copy(mi.b, size_t(mi.heads) * H, &s.b));
  if (mi.own_lm_head) LX_TRY(copy(mi.lm, size_t(mi.heads) * V * H, &s.lm));
  if (size_t(slot) >= medusa_.size()) medusa_.resize(slot + 1);
  medusa_[slot] = std::move(s);
  return Status::Ok();
}

// The K largest of l[0, V) by (value descending, index ascending) into ids[0, K), in that order, in one pass
// (K is a handful: a sort of the whole row cost ~80 µs per head at V = 8192, as much as the model's step).
static void top_k(const float* l, int V, int K, int32_t* ids) {
  float vals[64];
  int n = 0;
  K = std::min(K, 64);
  for (int v = 0; v < V; v++) {
    const float x = l[v];
    if (n == K && !(x > vals[K - 1])) continue;  // an equal value keeps the earlier index
    int j = n < K ? n++ : K - 1;
    for (; j > 0 && x > vals[j - 1]; j--) vals[j] = vals[j - 1], ids[j] = ids[j - 1];
    vals[j] = x;
    ids[j] = v;
  }
  for (int j = n; j < K; j++) ids[j] = -1;
}

// Drafts for the next step: for each group with a Medusa set, head h's top-k tokens at the hidden state of
// the row that produced the group's last token: state = x + silu(W_h x + b_h), logits = lm_head(state).
// Groups drafting with the same set run together, kMedusaRows / heads of them at a time, with one read-back of
// the logits (every row's result is the same as alone: the linear kernels are batch-invariant).
Status Model::medusa_draft(const StepInput& in, StepOutput* out) {
  const int G = int(in.groups.size()), H = cfg_.hidden, V = cfg_.vocab, K = std::max(1, in.medusa_k);
  int heads = 0;
  for (const auto& g : in.groups)
    if (g.medusa >= 0) heads = std::max(heads, medusa_[g.medusa].heads);
  out->medusa_heads = heads;
  out->medusa_ids.assign(size_t(G) * heads * K, -1);
  if (heads == 0) return Status::Ok();
  float *x = buf<float>(med_x_), *t = buf<float>(med_t_), *z = buf<float>(med_z_), *logits = buf<float>(med_logits_);
  std::vector<int64_t> dst, src;
  std::vector<int> gs;
  std::vector<char> done(G, 0);
  for (int g0 = 0; g0 < G; g0++) {
    const int set = in.groups[g0].medusa;
    if (set < 0 || done[g0]) continue;
    const MedusaSet& ms = medusa_[set];
    gs.clear();
    for (int g = g0; g < G && int(gs.size()) < std::max(1, kMedusaRows / ms.heads); g++)
      if (!done[g] && in.groups[g].medusa == set) gs.push_back(g), done[g] = 1;
    const int n = int(gs.size());
    dst.clear();
    src.clear();
    for (int i = 0; i < n; i++) dst.push_back(int64_t(i) * H), src.push_back(int64_t(out->last_row[gs[i]]) * H);
    const int64_t *dst_p, *src_p;
    LX_TRY(stage(dst.data(), dst.size(), &dst_p));
    LX_TRY(stage(src.data(), src.size(), &src_p));
    be_->copy_rows(x, dst_p, buf<float>(xo_), src_p, n, H);
    const float *w = buf<float>(ms.w), *b = buf<float>(ms.b);
    for (int h = 0; h < ms.heads; h++) {  // z [heads, n, H]
      be_->linear(x, n, Mat{w + size_t(h) * H * H, DType::F32, H, H}, b + size_t(h) * H, t, false);
      be_->add_silu(x, t, int64_t(n) * H, z + size_t(h) * n * H);
    }
    if (ms.own_lm_head)
      for (int h = 0; h < ms.heads; h++)
        be_->linear(z + size_t(h) * n * H, n, Mat{buf<float>(ms.lm) + size_t(h) * V * H, DType::F32, V, H}, nullptr,
                    logits + size_t(h) * n * V, false);
    else
      be_->linear(z, ms.heads * n, lm_head_, nullptr, logits, false);
    const void* lv;
    LX_TRY(be_->view(logits, size_t(ms.heads) * n * V * sizeof(float), &lv));
    for (int i = 0; i < n; i++)
      for (int h = 0; h < ms.heads; h++)
        top_k(static_cast<const float*>(lv) + (size_t(h) * n + i) * V, V, K, &out->medusa_ids[(size_t(gs[i]) * heads + h) * K]);
  }
  return Status::Ok();
}

size_t Model::lora_bytes(int slot) const {
  return slot >= 0 && slot < int(lora_.size()) ? lora_[slot].bytes : 0;
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
    groups_.push_back(LoraGroup{m.A, m.Bt, m.rank, m.scale, int(slot_tokens_[s].size()), slot_tok_[s], lora_[s].dtype});
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
  for (int i = 0; i < in.n_copies * 2; i++)
    if (in.block_copies[i] < 0 || in.block_copies[i] >= kv_blocks_)
      return Status::Invalid("block copy names block " + std::to_string(in.block_copies[i]) + ", outside [0, " + std::to_string(kv_blocks_) + ")");
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

  // Tokens of each active LoRA slot, staged once for every layer's lora_mm.
  auto group_slots = [&](int n, auto slot_of) -> Status {
    active_slots_.clear();
    if (slot_tokens_.size() != lora_.size()) slot_tokens_.assign(lora_.size(), {});
    for (auto& v : slot_tokens_) v.clear();
    for (int i = 0; i < n; i++) {
      int s = slot_of(i);
      if (s < 0) continue;
      if (slot_tokens_[s].empty()) active_slots_.push_back(s);
      slot_tokens_[s].push_back(i);
    }
    if (active_slots_.empty()) return Status::Ok();
    lora_tok_.clear();
    for (int s : active_slots_) lora_tok_.insert(lora_tok_.end(), slot_tokens_[s].begin(), slot_tokens_[s].end());
    const int32_t* staged;
    LX_TRY(stage(lora_tok_.data(), lora_tok_.size(), &staged));
    slot_tok_.assign(lora_.size(), nullptr);
    for (int s : active_slots_) slot_tok_[s] = staged, staged += slot_tokens_[s].size();
    return Status::Ok();
  };
  be_->begin_step();
  LX_TRY(group_slots(T, [&](int i) { return in.adapter[i]; }));

  // Embeddings and RoPE tables.
  float* x = buf<float>(x_);
  const int32_t* tokens;
  LX_TRY(stage(in.tokens, T, &tokens));
  be_->embed(tokens, T, embed_, x);
  const int half = c.head_dim / 2;
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      float ang = float(in.positions[t]) * c.inv_freq[i];
      cos_[size_t(t) * half + i] = float(std::cos(double(ang)));
      sin_[size_t(t) * half + i] = float(std::sin(double(ang)));
    }
  const float *cos_p, *sin_p;
  LX_TRY(stage(cos_.data(), size_t(T) * half, &cos_p));
  LX_TRY(stage(sin_.data(), size_t(T) * half, &sin_p));

  const int KD = c.n_kv * c.head_dim, hd = c.head_dim;
  const size_t per_layer = size_t(kv_blocks_) * c.n_kv * bs * c.head_dim;
  float* kv = buf<float>(kv_);
  std::vector<int64_t> dst_off, src_off;
  const int64_t *dst_p, *src_p;
  // Block copies first (copy-on-write of a block several sequences shared), then KV moves (compaction of
  // accepted speculative tokens): both read slots this step may overwrite. A block is n_kv·bs·hd contiguous
  // floats in each layer's K and V.
  if (in.n_copies > 0) {
    const int64_t blk = int64_t(c.n_kv) * bs * hd;
    dst_off.clear();
    src_off.clear();
    for (int l = 0; l < 2 * c.n_layers; l++)
      for (int i = 0; i < in.n_copies; i++) {
        src_off.push_back(int64_t(per_layer) * l + in.block_copies[i * 2] * blk);
        dst_off.push_back(int64_t(per_layer) * l + in.block_copies[i * 2 + 1] * blk);
      }
    LX_TRY(stage(dst_off.data(), dst_off.size(), &dst_p));
    LX_TRY(stage(src_off.data(), src_off.size(), &src_p));
    be_->copy_rows(kv, dst_p, kv, src_p, int(dst_off.size()), int(blk));
  }
  for (int i = 0; i < in.n_moves; i++) {
    const int32_t* tbl = in.bt + in.bt_offsets[in.kv_moves[i * 3]];
    const int f = in.kv_moves[i * 3 + 1], d = in.kv_moves[i * 3 + 2];
    dst_off.clear();
    src_off.clear();
    for (int l = 0; l < c.n_layers; l++)
      for (int part = 0; part < 2; part++) {
        const int64_t base = int64_t(per_layer) * (2 * l + part);
        for (int h = 0; h < c.n_kv; h++) {
          src_off.push_back(base + ((int64_t(tbl[f / bs]) * c.n_kv + h) * bs + f % bs) * hd);
          dst_off.push_back(base + ((int64_t(tbl[d / bs]) * c.n_kv + h) * bs + d % bs) * hd);
        }
      }
    LX_TRY(stage(dst_off.data(), dst_off.size(), &dst_p));
    LX_TRY(stage(src_off.data(), src_off.size(), &src_p));
    be_->copy_rows(kv, dst_p, kv, src_p, int(dst_off.size()), hd);
  }
  // Where each token's K and V rows go in a layer's cache (the same for every layer).
  dst_off.clear();
  src_off.clear();
  for (int t = 0; t < T; t++) {
    const int j = kv_idx[t];
    const int64_t blk = tables[t][j / bs];
    for (int h = 0; h < c.n_kv; h++) {
      dst_off.push_back(((blk * c.n_kv + h) * bs + j % bs) * hd);
      src_off.push_back(int64_t(t) * KD + int64_t(h) * hd);
    }
  }
  const int64_t *kv_dst, *kv_src;
  LX_TRY(stage(dst_off.data(), dst_off.size(), &kv_dst));
  LX_TRY(stage(src_off.data(), src_off.size(), &kv_src));
  // Attention inputs: block tables point into the staged block ids.
  const int32_t* bt_p;
  LX_TRY(stage(in.bt, size_t(in.bt_offsets[in.S]), &bt_p));
  for (int t = 0; t < T; t++) tables[t] = bt_p + in.bt_offsets[in.seq[t]];
  AttnArgs aa;
  aa.T = T;
  aa.n_heads = c.n_heads;
  aa.n_kv = c.n_kv;
  aa.head_dim = c.head_dim;
  aa.scale = 1.f / std::sqrt(float(c.head_dim));
  aa.block_size = bs;
  LX_TRY(stage(kv_len.data(), T, &aa.kv_len));
  LX_TRY(stage(tables.data(), T, &aa.block_table));
  if (in.tree_base) {
    LX_TRY(stage(in.tree_base, T, &aa.tree_base));
    LX_TRY(stage(in.tree_mask, T, &aa.tree_mask));
  }

  float *xb = buf<float>(xb_), *q = buf<float>(q_), *k = buf<float>(k_), *v = buf<float>(v_), *att = buf<float>(att_),
        *gate = buf<float>(gate_), *up = buf<float>(up_);
  for (int l = 0; l < c.n_layers; l++) {
    Layer& L = layers_[l];
    float* kc = kv + per_layer * 2 * l;
    float* vc = kc + per_layer;
    be_->rmsnorm(x, T, H, L.ln1_p, c.rms_eps, xb);
    lora_mm(xb, T, L.wq, L.bq_p, l, kQ, q, false);
    lora_mm(xb, T, L.wk, L.bk_p, l, kK, k, false);
    lora_mm(xb, T, L.wv, L.bv_p, l, kV, v, false);
    be_->rope(q, T, c.n_heads, c.head_dim, cos_p, sin_p);
    be_->rope(k, T, c.n_kv, c.head_dim, cos_p, sin_p);
    be_->copy_rows(kc, kv_dst, k, kv_src, T * c.n_kv, hd);
    be_->copy_rows(vc, kv_dst, v, kv_src, T * c.n_kv, hd);
    const int w = c.window[l];
    if (l == 0 || w != c.window[l - 1]) {
      // The window counts positions (speculative rows sit at later KV slots than their positions).
      for (int t = 0; t < T; t++) kv_begin[t] = w > 0 ? std::max(0, std::min(kv_len[t], in.positions[t] + 1) - w) : 0;
      LX_TRY(stage(kv_begin.data(), T, &aa.kv_begin));
    }
    aa.k_cache = kc;
    aa.v_cache = vc;
    be_->attention(aa, q, att);
    lora_mm(att, T, L.wo, nullptr, l, kO, x, true);
    be_->rmsnorm(x, T, H, L.ln2_p, c.rms_eps, xb);
    lora_mm(xb, T, L.wg, nullptr, l, kGate, gate, false);
    lora_mm(xb, T, L.wu, nullptr, l, kUp, up, false);
    be_->silu_mul(gate, up, int64_t(T) * c.intermediate, gate);
    lora_mm(gate, T, L.wd, nullptr, l, kDown, x, true);
  }

  // Output rows: final norm, lm_head (with each row's adapter), sampling.
  out->tokens.assign(R, -1);
  out->logprobs.assign(R, 0.f);
  out->target_logprobs.assign(R, 0.f);
  out->top_ids.assign(size_t(R) * in.n_top, -1);
  out->top_logprobs.assign(size_t(R) * in.n_top, 0.f);
  if (R == 0) return be_->sync();
  dst_off.clear();
  src_off.clear();
  for (int r = 0; r < R; r++) dst_off.push_back(int64_t(r) * H), src_off.push_back(int64_t(in.out_rows[r]) * H);
  LX_TRY(stage(dst_off.data(), R, &dst_p));
  LX_TRY(stage(src_off.data(), R, &src_p));
  be_->copy_rows(xb, dst_p, x, src_p, R, H);
  float *xo = buf<float>(xo_), *logits = buf<float>(logits_);
  be_->rmsnorm(xb, R, H, final_norm_p_, c.rms_eps, xo);
  const void* hv;
  if (in.want_hidden) {
    LX_TRY(be_->view(xo, size_t(R) * H * sizeof(float), &hv));
    out->hidden.assign(static_cast<const float*>(hv), static_cast<const float*>(hv) + size_t(R) * H);
  }
  LX_TRY(group_slots(R, [&](int r) { return in.adapter[in.out_rows[r]]; }));
  lora_mm(xo, R, lm_head_, nullptr, -1, kLmHead, logits, false);
  const int V = c.vocab;
  // Rows of speculative trees are sampled by their group's verification, the others one by one.
  std::vector<char> in_tree(R, 0);
  bool any_tree = false;
  for (const auto& g : in.groups)
    if (g.n > 1)
      for (int i = 0; i < g.n; i++) in_tree[g.first + i] = 1, any_tree = true;
  // Every row's logprobs and alternatives, and its token unless a tree verifies it, where the logits are.
  std::vector<SampleRow> srows(in.rows);
  std::vector<SampleOut> souts(R);
  for (int r = 0; r < R; r++) {
    srows[r].logits = logits + size_t(r) * V;
    srows[r].n_top = std::min(srows[r].n_top, in.n_top);
    if (in_tree[r]) srows[r].sample = false;  // logprobs and alternatives only
    souts[r].top_ids = out->top_ids.data() + size_t(r) * in.n_top;
    souts[r].top_logprobs = out->top_logprobs.data() + size_t(r) * in.n_top;
  }
  LX_TRY(be_->sample(srows.data(), R, V, reference_, souts.data()));
  for (int r = 0; r < R; r++) {
    out->tokens[r] = souts[r].token;
    out->logprobs[r] = souts[r].logprob;
    out->target_logprobs[r] = souts[r].target_logprob;
  }
  // The logits themselves reach the host only when asked for or for tree verification.
  if (in.want_logits || any_tree) {
    const void* lv;
    LX_TRY(be_->view(logits, size_t(R) * V * sizeof(float), &lv));
    const float* logits_h = static_cast<const float*>(lv);
    if (in.want_logits) out->logits.assign(logits_h, logits_h + size_t(R) * V);
    for (int r = 0; r < R; r++) in.rows[r].logits = logits_h + size_t(r) * V;
  }
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
  LX_TRY(be_->sync());  // the heads' time is their own (an accelerator would otherwise bill them the forward pass)
  const auto heads_t0 = std::chrono::steady_clock::now();
  LX_TRY(medusa_draft(in, out));
  LX_TRY(be_->sync());
  out->medusa_micros = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - heads_t0).count();
  return Status::Ok();
}

}  // namespace lx
