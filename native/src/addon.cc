// The N-API binding: turns JavaScript objects of typed arrays into native calls and back. Model loading and
// every step run on libuv worker threads (Promises); errors become JavaScript Errors with a `code`.
// Kernel entry points for tests (on any backend: CPU reference, CPU fast, CUDA), the CUDA availability info and
// the hardware probes for benchmarks are exposed here too.
#include <napi.h>

#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <chrono>
#include <cmath>
#include <memory>
#include <thread>

#include "fileread.h"
#include "model.h"
#include "probe.h"

namespace {

using lx::Status;

Napi::Error make_error(Napi::Env env, const Status& s) {
  Napi::Error e = Napi::Error::New(env, s.message);
  e.Set("code", Napi::String::New(env, s.code));
  return e;
}

[[noreturn]] void throw_invalid(Napi::Env env, const std::string& msg) {
  throw make_error(env, Status::Invalid(msg));
}

template <typename T, typename A>
std::vector<T> copy_array(Napi::Env env, const Napi::Value& v, const char* name, bool optional = false) {
  if (v.IsUndefined() || v.IsNull()) {
    if (optional) return {};
    throw_invalid(env, std::string("missing typed array '") + name + "'");
  }
  if (!v.IsTypedArray()) throw_invalid(env, std::string("'") + name + "' must be a typed array");
  A a = v.As<A>();
  return std::vector<T>(a.Data(), a.Data() + a.ElementLength());
}
#define I32(obj, key, opt) copy_array<int32_t, Napi::Int32Array>(env, (obj).Get(key), key, opt)
#define F32(obj, key, opt) copy_array<float, Napi::Float32Array>(env, (obj).Get(key), key, opt)

int get_int(const Napi::Object& o, const char* key, int def) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Int32Value() : def;
}
double get_num(const Napi::Object& o, const char* key, double def) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : def;
}
bool get_bool(const Napi::Object& o, const char* key, bool def) {
  Napi::Value v = o.Get(key);
  return v.IsBoolean() ? v.As<Napi::Boolean>().Value() : def;
}

template <typename T, typename A>
Napi::Value to_js(Napi::Env env, const std::vector<T>& v) {
  A a = A::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(T));
  return a;
}

// ---------------------------------------------------------------------------------------------------------
// Model wrapper

struct Handle {
  std::shared_ptr<lx::Model> model;
  std::atomic<bool> busy{false};
};

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, lx::LoadOptions opt) : Napi::AsyncWorker(env), opt_(std::move(opt)), deferred_(env) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      st_ = lx::Model::load(opt_, &model_);
    } catch (const std::bad_alloc&) {
      st_ = Status::NoMem("out of memory while loading the model");
    } catch (const std::exception& e) {
      st_ = Status::Internal(std::string("model load failed: ") + e.what());
    }
  }
  void OnOK() override;
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  lx::LoadOptions opt_;
  std::unique_ptr<lx::Model> model_;
  Status st_;
  Napi::Promise::Deferred deferred_;
};

class StepWorker : public Napi::AsyncWorker {
 public:
  StepWorker(Napi::Env env, std::shared_ptr<Handle> h) : Napi::AsyncWorker(env), h_(std::move(h)), deferred_(env) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  // Copies of the inputs: the step runs after JavaScript has moved on.
  std::vector<int32_t> tokens, positions, kv_index, seq, adapter, tree_base, bt_offsets, bt, out_rows, row_i, pen_ids,
      pen_counts, bias_ids, block_copies, kv_moves, groups, group_parents;
  int medusa_k = 1;
  std::vector<uint64_t> tree_mask, row_seed;
  std::vector<float> row_f, bias;
  std::vector<uint32_t> masks;
  int n_top = 0;
  bool want_logits = false, want_hidden = false;
  std::shared_ptr<lx::Model> model;

  void Execute() override {
    try {
      st_ = run();
    } catch (const std::bad_alloc&) {
      st_ = Status::NoMem("out of memory in a step");
    } catch (const std::exception& e) {
      st_ = Status::Internal(std::string("step failed: ") + e.what());
    }
  }
  void OnOK() override {
    h_->busy.store(false);
    Napi::Env env = Env();
    if (!st_.ok()) {
      deferred_.Reject(make_error(env, st_).Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("tokens", to_js<int32_t, Napi::Int32Array>(env, out_.tokens));
    o.Set("logprobs", to_js<float, Napi::Float32Array>(env, out_.logprobs));
    o.Set("targetLogprobs", to_js<float, Napi::Float32Array>(env, out_.target_logprobs));
    o.Set("topIds", to_js<int32_t, Napi::Int32Array>(env, out_.top_ids));
    o.Set("topLogprobs", to_js<float, Napi::Float32Array>(env, out_.top_logprobs));
    if (want_logits) o.Set("logits", to_js<float, Napi::Float32Array>(env, out_.logits));
    if (want_hidden) o.Set("hidden", to_js<float, Napi::Float32Array>(env, out_.hidden));
    o.Set("maxNodes", Napi::Number::New(env, out_.max_nodes));
    o.Set("accepted", to_js<int32_t, Napi::Int32Array>(env, out_.accepted));
    o.Set("path", to_js<int32_t, Napi::Int32Array>(env, out_.path));
    o.Set("pathLogprobs", to_js<float, Napi::Float32Array>(env, out_.path_logprobs));
    o.Set("bonus", to_js<int32_t, Napi::Int32Array>(env, out_.bonus));
    o.Set("bonusLogprobs", to_js<float, Napi::Float32Array>(env, out_.bonus_logprobs));
    o.Set("lastRow", to_js<int32_t, Napi::Int32Array>(env, out_.last_row));
    o.Set("medusaHeads", Napi::Number::New(env, out_.medusa_heads));
    o.Set("medusaIds", to_js<int32_t, Napi::Int32Array>(env, out_.medusa_ids));
    o.Set("micros", Napi::Number::New(env, micros_));
    o.Set("medusaMicros", Napi::Number::New(env, out_.medusa_micros));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override {
    h_->busy.store(false);
    deferred_.Reject(e.Value());
  }

 private:
  Status run() {
    auto t0 = std::chrono::steady_clock::now();
    const int T = int(tokens.size()), R = int(out_rows.size());
    constexpr int kRowI = 10, kRowF = 8;
    auto bad_len = [](const char* n, size_t got, size_t want) {
      return Status::Invalid(std::string("'") + n + "' has " + std::to_string(got) + " entries, expected " + std::to_string(want));
    };
    if (positions.size() != size_t(T)) return bad_len("positions", positions.size(), T);
    if (seq.size() != size_t(T)) return bad_len("seq", seq.size(), T);
    if (adapter.size() != size_t(T)) return bad_len("adapter", adapter.size(), T);
    if (!kv_index.empty() && kv_index.size() != size_t(T)) return bad_len("kvIndex", kv_index.size(), T);
    if (!tree_base.empty() && (tree_base.size() != size_t(T) || tree_mask.size() != size_t(T)))
      return bad_len("treeBase/treeMask", tree_base.size(), T);
    if (bt_offsets.empty()) return Status::Invalid("'btOffsets' is empty");
    const int S = int(bt_offsets.size()) - 1;
    for (int s = 0; s < S; s++)
      if (bt_offsets[s] < 0 || bt_offsets[s] > bt_offsets[s + 1] || bt_offsets[s + 1] > int(bt.size()))
        return Status::Invalid("'btOffsets' is not a non-decreasing list of offsets into 'bt'");
    if (row_i.size() != size_t(R) * kRowI) return bad_len("rowI", row_i.size(), size_t(R) * kRowI);
    if (row_f.size() != size_t(R) * kRowF) return bad_len("rowF", row_f.size(), size_t(R) * kRowF);
    if (row_seed.size() != size_t(R)) return bad_len("rowSeed", row_seed.size(), R);
    if (pen_ids.size() != pen_counts.size()) return bad_len("penCounts", pen_counts.size(), pen_ids.size());
    if (bias_ids.size() != bias.size()) return bad_len("bias", bias.size(), bias_ids.size());
    const int V = model->config().vocab, words = (V + 31) / 32;
    lx::StepInput in;
    in.T = T;
    in.tokens = tokens.data();
    in.positions = positions.data();
    in.kv_index = kv_index.empty() ? nullptr : kv_index.data();
    in.seq = seq.data();
    in.adapter = adapter.data();
    in.tree_base = tree_base.empty() ? nullptr : tree_base.data();
    in.tree_mask = tree_mask.empty() ? nullptr : tree_mask.data();
    in.S = S;
    in.bt_offsets = bt_offsets.data();
    in.bt = bt.data();
    in.R = R;
    in.out_rows = out_rows.data();
    in.n_top = n_top;
    in.want_logits = want_logits;
    in.want_hidden = want_hidden;
    in.rows.resize(R);
    for (int r = 0; r < R; r++) {
      const int32_t* ri = row_i.data() + size_t(r) * kRowI;
      const float* rf = row_f.data() + size_t(r) * kRowF;
      lx::SampleRow& sr = in.rows[r];
      sr.top_k = ri[0];
      sr.n_top = ri[1];
      sr.target = ri[2];
      sr.sample = ri[3] & 1;
      sr.do_sample = (ri[3] >> 1) & 1;
      const int po = ri[4], pn = ri[5], mi = ri[6];
      sr.step = uint64_t(uint32_t(ri[7]));
      if (po < 0 || pn < 0 || size_t(po) + pn > pen_ids.size()) return Status::Invalid("penalty range of row " + std::to_string(r) + " out of bounds");
      sr.pen_ids = pen_ids.data() + po;
      sr.pen_counts = pen_counts.data() + po;
      sr.n_pen = pn;
      const int bo = ri[8], bn = ri[9];
      if (bo < 0 || bn < 0 || size_t(bo) + bn > bias_ids.size()) return Status::Invalid("logit bias range of row " + std::to_string(r) + " out of bounds");
      sr.bias_ids = bias_ids.data() + bo;
      sr.bias = bias.data() + bo;
      sr.n_bias = bn;
      if (mi >= 0) {
        if (size_t(mi + 1) * words > masks.size()) return Status::Invalid("mask index " + std::to_string(mi) + " of row " + std::to_string(r) + " out of bounds");
        sr.mask = masks.data() + size_t(mi) * words;
      }
      sr.temperature = rf[0];
      sr.top_p = rf[1];
      sr.typical_p = rf[2];
      sr.min_p = rf[3];
      sr.repetition_penalty = rf[4];
      sr.presence_penalty = rf[5];
      sr.frequency_penalty = rf[6];
      sr.seed = row_seed[r];
      if (!(sr.temperature >= 0) || !(sr.top_p > 0 && sr.top_p <= 1) || !(sr.typical_p > 0 && sr.typical_p <= 1) ||
          !(sr.repetition_penalty > 0))
        return Status::Invalid("row " + std::to_string(r) + " has sampling settings out of range (temperature " +
                               std::to_string(sr.temperature) + ", top_p " + std::to_string(sr.top_p) + ", typical_p " +
                               std::to_string(sr.typical_p) + ", repetition_penalty " + std::to_string(sr.repetition_penalty) + ")");
    }
    if (block_copies.size() % 2 != 0) return Status::Invalid("'blockCopies' must hold (source, destination) block pairs");
    in.block_copies = block_copies.data();
    in.n_copies = int(block_copies.size() / 2);
    if (kv_moves.size() % 3 != 0) return Status::Invalid("'kvMoves' must hold (sequence, from, to) triples");
    in.kv_moves = kv_moves.data();
    in.n_moves = int(kv_moves.size() / 3);
    if (groups.size() % 3 != 0) return Status::Invalid("'groups' must hold (first row, nodes, medusa set) triples");
    size_t po = 0;
    for (size_t g = 0; g < groups.size() / 3; g++) {
      lx::StepInput::Group gr;
      gr.first = groups[g * 3];
      gr.n = groups[g * 3 + 1];
      gr.medusa = groups[g * 3 + 2];
      if (gr.n < 1 || po + size_t(gr.n) > group_parents.size()) return Status::Invalid("'groupParents' is shorter than the groups' nodes");
      gr.parent = group_parents.data() + po;
      po += size_t(gr.n);
      in.groups.push_back(gr);
    }
    in.medusa_k = medusa_k;
    Status s = model->step(in, &out_);
    micros_ = double(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
    return s;
  }

  std::shared_ptr<Handle> h_;
  Napi::Promise::Deferred deferred_;
  Status st_;
  lx::StepOutput out_;
  double micros_ = 0;
};

std::shared_ptr<Handle> handle_of(const Napi::CallbackInfo& info) {
  auto* h = static_cast<std::shared_ptr<Handle>*>(info.Data());
  if (!(*h)->model) throw make_error(info.Env(), Status{"ECLOSED", "model is closed"});
  return *h;
}

Napi::Value Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handle_of(info);
  if (!info[0].IsObject()) throw_invalid(env, "step(input): input must be an object of typed arrays");
  Napi::Object o = info[0].As<Napi::Object>();
  auto* w = new StepWorker(env, h);
  try {
    w->tokens = I32(o, "tokens", false);
    w->positions = I32(o, "positions", false);
    w->kv_index = I32(o, "kvIndex", true);
    w->seq = I32(o, "seq", false);
    w->adapter = I32(o, "adapter", false);
    w->tree_base = I32(o, "treeBase", true);
    w->tree_mask = copy_array<uint64_t, Napi::BigUint64Array>(env, o.Get("treeMask"), "treeMask", true);
    w->bt_offsets = I32(o, "btOffsets", false);
    w->bt = I32(o, "bt", false);
    w->out_rows = I32(o, "outRows", false);
    w->row_i = I32(o, "rowI", false);
    w->row_f = F32(o, "rowF", false);
    w->row_seed = copy_array<uint64_t, Napi::BigUint64Array>(env, o.Get("rowSeed"), "rowSeed", false);
    w->pen_ids = I32(o, "penIds", true);
    w->pen_counts = I32(o, "penCounts", true);
    w->bias_ids = I32(o, "biasIds", true);
    w->bias = F32(o, "bias", true);
    w->masks = copy_array<uint32_t, Napi::Uint32Array>(env, o.Get("masks"), "masks", true);
    w->n_top = std::max(0, std::min(get_int(o, "nTop", 0), 64));
    w->block_copies = I32(o, "blockCopies", true);
    w->kv_moves = I32(o, "kvMoves", true);
    w->groups = I32(o, "groups", true);
    w->group_parents = I32(o, "groupParents", true);
    w->medusa_k = std::max(1, std::min(get_int(o, "medusaK", 1), 16));
    w->want_logits = get_bool(o, "wantLogits", false);
    w->want_hidden = get_bool(o, "wantHidden", false);
  } catch (...) {
    delete w;
    throw;
  }
  if (h->busy.exchange(true)) {
    delete w;
    throw make_error(env, Status{"EBUSY", "a step is already running on this model: the engine runs one at a time"});
  }
  w->model = h->model;
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handle_of(info);
  lx::Model& m = *h->model;
  Napi::Object o = Napi::Object::New(env);
  o.Set("backend", m.backend().name());
  o.Set("threads", m.backend().threads());
  o.Set("weightBytes", double(m.weight_bytes()));
  o.Set("weightsInMemory", m.weights_in_memory());
  o.Set("loraElementBytes", double(m.lora_element_bytes()));
  o.Set("kvBytes", double(m.kv_bytes()));
  o.Set("kvBlocks", m.kv_blocks());
  o.Set("blockSize", m.block_size());
  o.Set("maxStepTokens", m.max_step_tokens());
  o.Set("maxOutRows", m.max_out_rows());
  return o;
}

// loraLoad(slot, modules: [{layer, target, rank, scale, a: Float32Array, b: Float32Array}]) → Promise<bytes>.
// The copy into the slot runs on a worker thread (the arrays are kept alive by references meanwhile), so the
// next adapters load while a step runs. The engine never loads a slot that a running step uses.
class LoraLoadWorker : public Napi::AsyncWorker {
 public:
  LoraLoadWorker(Napi::Env env, std::shared_ptr<Handle> h, int slot)
      : Napi::AsyncWorker(env), h_(std::move(h)), slot_(slot), deferred_(env) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  std::vector<lx::LoraModuleIn> mods;
  std::vector<Napi::ObjectReference> keep;
  std::shared_ptr<lx::Model> model;
  void Execute() override {
    try {
      st_ = model->lora_load(slot_, mods);
    } catch (const std::bad_alloc&) {
      st_ = Status::NoMem("out of memory loading a LoRA adapter");
    }
  }
  void OnOK() override {
    keep.clear();
    if (!st_.ok()) deferred_.Reject(make_error(Env(), st_).Value());
    else deferred_.Resolve(Napi::Number::New(Env(), double(model->lora_bytes(slot_))));
  }
  void OnError(const Napi::Error& e) override {
    keep.clear();
    deferred_.Reject(e.Value());
  }

 private:
  std::shared_ptr<Handle> h_;
  int slot_;
  Napi::Promise::Deferred deferred_;
  Status st_;
};

Napi::Value LoraLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handle_of(info);
  if (!info[0].IsNumber()) throw_invalid(env, "loraLoad(slot, modules): slot must be a number");
  int slot = info[0].As<Napi::Number>().Int32Value();
  if (!info[1].IsArray()) throw_invalid(env, "loraLoad(slot, modules): modules must be an array");
  Napi::Array arr = info[1].As<Napi::Array>();
  auto* w = new LoraLoadWorker(env, h, slot);
  try {
    const auto& c = h->model->config();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Object mo = arr.Get(i).As<Napi::Object>();
      lx::LoraModuleIn mi;
      mi.layer = get_int(mo, "layer", -2);
      mi.target = get_int(mo, "target", -1);
      mi.rank = get_int(mo, "rank", 0);
      mi.scale = float(get_num(mo, "scale", 0));
      if (!mo.Get("a").IsTypedArray() || !mo.Get("b").IsTypedArray()) throw_invalid(env, "LoRA module needs Float32Array a and b");
      Napi::Float32Array a = mo.Get("a").As<Napi::Float32Array>(), b = mo.Get("b").As<Napi::Float32Array>();
      int di = mi.target == lx::kO ? c.n_heads * c.head_dim : mi.target == lx::kDown ? c.intermediate : c.hidden;
      int dout = mi.target == lx::kQ ? c.n_heads * c.head_dim
                 : (mi.target == lx::kK || mi.target == lx::kV) ? c.n_kv * c.head_dim
                 : (mi.target == lx::kGate || mi.target == lx::kUp) ? c.intermediate
                 : mi.target == lx::kLmHead ? c.vocab : c.hidden;
      if (mi.rank < 0 || a.ElementLength() != size_t(mi.rank) * di || b.ElementLength() != size_t(mi.rank) * dout)
        throw_invalid(env, "LoRA module " + std::to_string(i) + ": A has " + std::to_string(a.ElementLength()) + " floats, B " +
                               std::to_string(b.ElementLength()) + "; expected " + std::to_string(size_t(mi.rank) * di) + " and " +
                               std::to_string(size_t(mi.rank) * dout));
      mi.a = a.Data();
      mi.b = b.Data();
      w->mods.push_back(mi);
      w->keep.push_back(Napi::Persistent(a.As<Napi::Object>()));
      w->keep.push_back(Napi::Persistent(b.As<Napi::Object>()));
    }
  } catch (...) {
    delete w;
    throw;
  }
  w->model = h->model;
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// medusaLoad(slot, {heads, ownLmHead, w: Float32Array [heads,H,H], b: [heads,H], lm?: [heads,V,H]}) — copies.
Napi::Value MedusaLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto h = handle_of(info);
  if (!info[0].IsNumber() || !info[1].IsObject()) throw_invalid(env, "medusaLoad(slot, heads): bad arguments");
  Napi::Object o = info[1].As<Napi::Object>();
  lx::MedusaIn mi;
  mi.heads = get_int(o, "heads", 0);
  mi.own_lm_head = get_bool(o, "ownLmHead", false);
  const auto& c = h->model->config();
  const size_t H = size_t(c.hidden), V = size_t(c.vocab), n = size_t(std::max(0, mi.heads));
  auto w = F32(o, "w", false), b = F32(o, "b", false), lm = F32(o, "lm", !mi.own_lm_head);
  if (w.size() != n * H * H || b.size() != n * H || (mi.own_lm_head && lm.size() != n * V * H))
    throw_invalid(env, "Medusa heads: expected w [" + std::to_string(n) + "," + std::to_string(H) + "," + std::to_string(H) + "], b [" +
                           std::to_string(n) + "," + std::to_string(H) + "]" + (mi.own_lm_head ? ", lm [" + std::to_string(n) + "," + std::to_string(V) + "," + std::to_string(H) + "]" : "") +
                           "; got " + std::to_string(w.size()) + ", " + std::to_string(b.size()) + " floats (hidden size of another model?)");
  mi.w = w.data();
  mi.b = b.data();
  mi.lm = lm.empty() ? nullptr : lm.data();
  Status s = h->model->medusa_load(info[0].As<Napi::Number>().Int32Value(), mi);
  if (!s.ok()) throw make_error(env, s);
  return env.Undefined();
}

Napi::Value LoraFree(const Napi::CallbackInfo& info) {
  auto h = handle_of(info);
  Status s = h->model->lora_free(info[0].As<Napi::Number>().Int32Value());
  if (!s.ok()) throw make_error(info.Env(), s);
  return info.Env().Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  auto* h = static_cast<std::shared_ptr<Handle>*>(info.Data());
  (*h)->model.reset();  // a running step keeps its own reference until it ends
  return info.Env().Undefined();
}

void LoadWorker::OnOK() {
  Napi::Env env = Env();
  if (!st_.ok()) {
    deferred_.Reject(make_error(env, st_).Value());
    return;
  }
  auto* hp = new std::shared_ptr<Handle>(std::make_shared<Handle>());
  (*hp)->model = std::shared_ptr<lx::Model>(std::move(model_));
  Napi::Object o = Napi::Object::New(env);
  o.Set("step", Napi::Function::New(env, Step, "step", hp));
  o.Set("info", Napi::Function::New(env, Info, "info", hp));
  o.Set("loraLoad", Napi::Function::New(env, LoraLoad, "loraLoad", hp));
  o.Set("loraFree", Napi::Function::New(env, LoraFree, "loraFree", hp));
  o.Set("medusaLoad", Napi::Function::New(env, MedusaLoad, "medusaLoad", hp));
  o.Set("close", Napi::Function::New(env, Close, "close", hp));
  o.AddFinalizer([](Napi::Env, std::shared_ptr<Handle>* p) { delete p; }, hp);
  deferred_.Resolve(o);
}

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw_invalid(env, "loadModel(options): options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  lx::LoadOptions opt;
  Napi::Object c = o.Get("config").As<Napi::Object>();
  opt.cfg.vocab = get_int(c, "vocab", 0);
  opt.cfg.hidden = get_int(c, "hidden", 0);
  opt.cfg.intermediate = get_int(c, "intermediate", 0);
  opt.cfg.n_layers = get_int(c, "layers", 0);
  opt.cfg.n_heads = get_int(c, "heads", 0);
  opt.cfg.n_kv = get_int(c, "kvHeads", 0);
  opt.cfg.head_dim = get_int(c, "headDim", 0);
  opt.cfg.rms_eps = float(get_num(c, "rmsEps", 1e-6));
  opt.cfg.tied = get_bool(c, "tied", false);
  opt.cfg.qkv_bias = get_bool(c, "qkvBias", false);
  opt.cfg.inv_freq = F32(c, "invFreq", false);
  opt.cfg.window = I32(c, "window", false);
  Napi::Array files = o.Get("files").As<Napi::Array>();
  for (uint32_t i = 0; i < files.Length(); i++) opt.files.push_back(files.Get(i).As<Napi::String>().Utf8Value());
  Napi::Array ts = o.Get("tensors").As<Napi::Array>();
  for (uint32_t i = 0; i < ts.Length(); i++) {
    Napi::Object t = ts.Get(i).As<Napi::Object>();
    lx::TensorRef r;
    r.name = t.Get("name").As<Napi::String>().Utf8Value();
    r.file = get_int(t, "file", -1);
    int dt = get_int(t, "dtype", -1);
    if (dt < 0 || dt > 2) throw_invalid(env, "tensor " + r.name + " has an unknown dtype code");
    r.dtype = lx::DType(dt);
    Napi::Array sh = t.Get("shape").As<Napi::Array>();
    for (uint32_t j = 0; j < sh.Length(); j++) r.shape.push_back(int64_t(sh.Get(j).As<Napi::Number>().DoubleValue()));
    r.offset = uint64_t(get_num(t, "offset", 0));
    r.nbytes = uint64_t(get_num(t, "nbytes", 0));
    opt.tensors.push_back(std::move(r));
  }
  opt.kv_blocks = get_int(o, "kvBlocks", 0);
  opt.block_size = get_int(o, "blockSize", 16);
  opt.max_step_tokens = get_int(o, "maxStepTokens", 512);
  opt.max_out_rows = get_int(o, "maxOutRows", 64);
  opt.threads = get_int(o, "threads", 0);
  opt.reference = get_bool(o, "reference", false);
  opt.map_weights = get_bool(o, "mapWeights", false);
  opt.weight_dtype = get_int(o, "weightDtype", -1);
  opt.lora_slots = get_int(o, "loraSlots", 0);
  opt.lora_max_rank = get_int(o, "loraMaxRank", 128);
  opt.device = o.Get("device").IsString() ? o.Get("device").As<Napi::String>().Utf8Value() : "auto";
  auto* w = new LoadWorker(env, std::move(opt));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// ---------------------------------------------------------------------------------------------------------
// Kernel entry points for tests: kernel(name, device, args) → result, where device is true (CPU reference),
// false (CPU fast), or "reference" | "cpu" | "cpu-avx512" (fast, without AVX-512 BF16 dot products) |
// "cpu-avx2" (fast, without the AVX-512VL GEMM either) | "cuda". Inputs
// are copied into the backend's op memory, the op runs, outputs are copied back: the same path on every backend.

Status test_backend(Napi::Value sel, lx::Backend** out) {
  using lx::CpuKernels;
  static std::unique_ptr<lx::Backend> ref = lx::make_cpu_backend(true, 1, CpuKernels::kAvx2),
                                      fast = lx::make_cpu_backend(false, 0, CpuKernels::kAvx512Bf16),
                                      avx512 = lx::make_cpu_backend(false, 0, CpuKernels::kAvx512),
                                      avx2 = lx::make_cpu_backend(false, 0, CpuKernels::kAvx2), cuda;
  std::string d = sel.IsBoolean() ? (sel.As<Napi::Boolean>().Value() ? "reference" : "cpu")
                                  : sel.IsString() ? sel.As<Napi::String>().Utf8Value() : "";
  if (d == "reference") *out = ref.get();
  else if (d == "cpu") *out = fast.get();
  else if (d == "cpu-avx512") *out = avx512.get();
  else if (d == "cpu-avx2") *out = avx2.get();
  else if (d == "cuda") {
    if (!cuda) LX_TRY(lx::make_cuda_backend(0, &cuda));
    *out = cuda.get();
  } else return Status::Invalid("kernel device must be true, false, \"reference\", \"cpu\", \"cpu-avx512\", \"cpu-avx2\" or \"cuda\"");
  return Status::Ok();
}

// Host arrays in and out of a backend's op memory, for one kernel call.
struct OpMem {
  Napi::Env env;
  lx::Backend& be;
  std::vector<lx::Buffer> held;
  void check(const Status& s) {
    if (!s.ok()) throw make_error(env, s);
  }
  template <typename T>
  T* put(const T* host, size_t n) {
    lx::Buffer b;
    check(be.alloc(n * sizeof(T), &b));
    check(be.upload(b.get(), host, n * sizeof(T)));
    held.push_back(std::move(b));
    return lx::buf<T>(held.back());
  }
  template <typename T>
  T* put(const std::vector<T>& v) {
    return put(v.data(), v.size());
  }
  template <typename T>
  std::vector<T> get(const T* dev, size_t n) {
    std::vector<T> v(n);
    check(be.sync());
    check(be.download(v.data(), dev, n * sizeof(T)));
    return v;
  }
};

Napi::Value Kernel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  bool reference = info[1].IsBoolean() ? info[1].As<Napi::Boolean>().Value()
                                       : info[1].IsString() && info[1].As<Napi::String>().Utf8Value() == "reference";
  Napi::Object a = info[2].As<Napi::Object>();
  lx::Backend* bep = nullptr;
  Status bs = test_backend(info[1], &bep);
  if (!bs.ok()) throw make_error(env, bs);
  lx::Backend& be = *bep;
  OpMem m{env, be, {}};
  if (name == "linear") {
    auto x = F32(a, "x", false);
    int T = get_int(a, "T", 0), N = get_int(a, "N", 0), K = get_int(a, "K", 0), dt = get_int(a, "dtype", 0);
    Napi::TypedArray w = a.Get("w").As<Napi::TypedArray>();
    auto bias = F32(a, "bias", true);
    auto y = F32(a, "y", true);
    if (x.size() != size_t(T) * K || w.ByteLength() != size_t(N) * K * lx::dtype_size(lx::DType(dt)))
      throw_invalid(env, "linear: sizes do not match T, N, K, dtype");
    bool acc = !y.empty();
    if (!acc) y.assign(size_t(T) * N, 0.f);
    const uint8_t* wd = static_cast<const uint8_t*>(w.ArrayBuffer().Data()) + w.ByteOffset();
    float* yd = m.put(y);
    be.linear(m.put(x), T, lx::Mat{m.put(wd, w.ByteLength()), lx::DType(dt), N, K}, bias.empty() ? nullptr : m.put(bias), yd, acc);
    return to_js<float, Napi::Float32Array>(env, m.get(yd, y.size()));
  }
  if (name == "rmsnorm") {
    auto x = F32(a, "x", false), w = F32(a, "w", false);
    int T = get_int(a, "T", 0), H = int(w.size());
    float* out = m.put(std::vector<float>(x.size()));
    be.rmsnorm(m.put(x), T, H, m.put(w), float(get_num(a, "eps", 1e-6)), out);
    return to_js<float, Napi::Float32Array>(env, m.get(out, x.size()));
  }
  if (name == "rope") {
    auto x = F32(a, "x", false), c = F32(a, "cos", false), s = F32(a, "sin", false);
    float* xd = m.put(x);
    be.rope(xd, get_int(a, "T", 0), get_int(a, "heads", 0), get_int(a, "headDim", 0), m.put(c), m.put(s));
    return to_js<float, Napi::Float32Array>(env, m.get(xd, x.size()));
  }
  if (name == "siluMul") {
    auto g = F32(a, "gate", false), u = F32(a, "up", false);
    float* out = m.put(std::vector<float>(g.size()));
    be.silu_mul(m.put(g), m.put(u), int64_t(g.size()), out);
    return to_js<float, Napi::Float32Array>(env, m.get(out, g.size()));
  }
  if (name == "addSilu") {
    auto x = F32(a, "x", false), t = F32(a, "t", false);
    if (t.size() != x.size()) throw_invalid(env, "addSilu: x and t differ in length");
    float* out = m.put(std::vector<float>(x.size()));
    be.add_silu(m.put(x), m.put(t), int64_t(x.size()), out);
    return to_js<float, Napi::Float32Array>(env, m.get(out, x.size()));
  }
  if (name == "embed") {
    auto tokens = I32(a, "tokens", false);
    int V = get_int(a, "vocab", 0), H = get_int(a, "H", 0), dt = get_int(a, "dtype", 0);
    Napi::TypedArray e = a.Get("e").As<Napi::TypedArray>();
    if (e.ByteLength() != size_t(V) * H * lx::dtype_size(lx::DType(dt))) throw_invalid(env, "embed: e does not hold [vocab, H] of dtype");
    for (int32_t t : tokens)
      if (t < 0 || t >= V) throw_invalid(env, "embed: token " + std::to_string(t) + " out of range");
    const uint8_t* ed = static_cast<const uint8_t*>(e.ArrayBuffer().Data()) + e.ByteOffset();
    float* out = m.put(std::vector<float>(tokens.size() * size_t(H)));
    be.embed(m.put(tokens), int(tokens.size()), lx::Mat{m.put(ed, e.ByteLength()), lx::DType(dt), V, H}, out);
    return to_js<float, Napi::Float32Array>(env, m.get(out, tokens.size() * size_t(H)));
  }
  if (name == "logsumexp") {
    auto x = F32(a, "x", false);
    return Napi::Number::New(env, be.logsumexp(x.data(), int64_t(x.size())));
  }
  if (name == "softmax") {
    auto x = F32(a, "x", false);
    be.softmax(x.data(), int64_t(x.size()));
    return to_js<float, Napi::Float32Array>(env, x);
  }
  if (name == "attention") {
    auto q = F32(a, "q", false), kc = F32(a, "k", false), vc = F32(a, "v", false);
    auto kv_len = I32(a, "kvLen", false), kv_begin = I32(a, "kvBegin", false), tables = I32(a, "tables", false);
    auto tree_base = I32(a, "treeBase", true);
    auto seq = I32(a, "seq", true);  // optional [T]: token t reads table row seq[t] (tokens of one sequence share it)
    auto tree_mask = copy_array<uint64_t, Napi::BigUint64Array>(env, a.Get("treeMask"), "treeMask", true);
    lx::AttnArgs aa;
    aa.T = get_int(a, "T", 0);
    aa.n_heads = get_int(a, "heads", 0);
    aa.n_kv = get_int(a, "kvHeads", 0);
    aa.head_dim = get_int(a, "headDim", 0);
    aa.block_size = get_int(a, "blockSize", 16);
    aa.scale = float(get_num(a, "scale", 1));
    int max_blocks = get_int(a, "maxBlocks", 0);
    const size_t n_tables = max_blocks > 0 ? tables.size() / max_blocks : 0;
    bool seq_ok = seq.empty() || seq.size() == size_t(aa.T);
    for (int32_t v : seq) seq_ok = seq_ok && v >= 0 && size_t(v) < n_tables;
    if (kv_len.size() != size_t(aa.T) || kv_begin.size() != size_t(aa.T) || max_blocks <= 0 ||
        tables.size() != (seq.empty() ? size_t(aa.T) : n_tables) * max_blocks || !seq_ok ||
        (!tree_base.empty() && (tree_base.size() != size_t(aa.T) || tree_mask.size() != size_t(aa.T))))
      throw_invalid(env, "attention: kvLen, kvBegin, tables, seq, treeBase, treeMask do not match T and maxBlocks");
    const int32_t* td = m.put(tables);
    std::vector<const int32_t*> bt(aa.T);
    for (int t = 0; t < aa.T; t++) bt[t] = td + size_t(seq.empty() ? t : seq[t]) * max_blocks;
    aa.kv_len = m.put(kv_len);
    aa.kv_begin = m.put(kv_begin);
    aa.block_table = m.put(bt);
    if (!tree_base.empty()) aa.tree_base = m.put(tree_base), aa.tree_mask = m.put(tree_mask);
    aa.k_cache = m.put(kc);
    aa.v_cache = m.put(vc);
    float* out = m.put(std::vector<float>(q.size()));
    be.attention(aa, m.put(q), out);
    return to_js<float, Napi::Float32Array>(env, m.get(out, q.size()));
  }
  if (name == "lora") {
    auto x = F32(a, "x", false), y = F32(a, "y", false);
    int d_in = get_int(a, "dIn", 0), d_out = get_int(a, "dOut", 0);
    Napi::Array gs = a.Get("groups").As<Napi::Array>();
    const bool bf16 = get_bool(a, "bf16", false);  // factors stored as BF16 (rounded from the f32 given)
    auto store = [&](const std::vector<float>& v) -> const void* {
      if (!bf16) return m.put(v);
      std::vector<uint16_t> h(v.size());
      for (size_t i = 0; i < v.size(); i++) h[i] = lx::f32_to_bf16(v[i]);
      return m.put(h);
    };
    std::vector<lx::LoraGroup> groups;
    for (uint32_t i = 0; i < gs.Length(); i++) {
      Napi::Object g = gs.Get(i).As<Napi::Object>();
      auto A = F32(g, "a", false), Bt = F32(g, "bt", false);
      auto toks = I32(g, "tokens", false);
      groups.push_back(lx::LoraGroup{store(A), store(Bt), get_int(g, "rank", 0), float(get_num(g, "scale", 1)),
                                     int(toks.size()), m.put(toks), bf16 ? lx::DType::BF16 : lx::DType::F32});
    }
    float* yd = m.put(y);
    be.lora(m.put(x), d_in, yd, d_out, groups.data(), int(groups.size()));
    return to_js<float, Napi::Float32Array>(env, m.get(yd, y.size()));
  }
  if (name == "sample") {
    auto logits = F32(a, "logits", false);
    auto pen_ids = I32(a, "penIds", true), pen_counts = I32(a, "penCounts", true), bias_ids = I32(a, "biasIds", true);
    auto bias = F32(a, "bias", true);
    if (bias.size() != bias_ids.size()) throw_invalid(env, "'bias' has " + std::to_string(bias.size()) + " entries, expected " + std::to_string(bias_ids.size()));
    auto mask = copy_array<uint32_t, Napi::Uint32Array>(env, a.Get("mask"), "mask", true);
    lx::SampleRow r;
    r.logits = m.put(logits);  // op memory: sampled where the backend keeps logits
    r.sample = get_bool(a, "sample", true);
    r.do_sample = get_bool(a, "doSample", false);
    r.temperature = float(get_num(a, "temperature", 1));
    r.top_p = float(get_num(a, "topP", 1));
    r.typical_p = float(get_num(a, "typicalP", 1));
    r.min_p = float(get_num(a, "minP", 0));
    r.top_k = get_int(a, "topK", 0);
    r.repetition_penalty = float(get_num(a, "repetitionPenalty", 1));
    r.presence_penalty = float(get_num(a, "presencePenalty", 0));
    r.frequency_penalty = float(get_num(a, "frequencyPenalty", 0));
    r.seed = uint64_t(get_num(a, "seed", 0));
    r.step = uint64_t(get_num(a, "step", 0));
    r.n_top = get_int(a, "nTop", 0);
    r.target = get_int(a, "target", -1);
    r.pen_ids = pen_ids.data();
    r.pen_counts = pen_counts.data();
    r.n_pen = int(pen_ids.size());
    r.bias_ids = bias_ids.data();
    r.bias = bias.data();
    r.n_bias = int(bias_ids.size());
    r.mask = mask.empty() ? nullptr : mask.data();
    std::vector<int32_t> top(std::max(0, r.n_top));
    std::vector<float> toplp(top.size());
    lx::SampleOut so;
    so.top_ids = top.data();
    so.top_logprobs = toplp.data();
    m.check(be.sample(&r, 1, int(logits.size()), reference, &so));
    Napi::Object o = Napi::Object::New(env);
    o.Set("token", so.token);
    o.Set("logprob", so.logprob);
    o.Set("targetLogprob", so.target_logprob);
    o.Set("topIds", to_js<int32_t, Napi::Int32Array>(env, top));
    o.Set("topLogprobs", to_js<float, Napi::Float32Array>(env, toplp));
    return o;
  }
  throw_invalid(env, "unknown kernel '" + name + "'");
}

// readFile(path) → Promise<ArrayBuffer>: the whole file, read on a worker thread into memory the addon owns
// (freed when the ArrayBuffer is collected). Adapter weights land here rather than in a Node Buffer: the pages
// are populated in one call instead of faulted one by one during the read. Errors name the path and errno.
class ReadFileWorker : public Napi::AsyncWorker {
 public:
  ReadFileWorker(Napi::Env env, std::string path) : Napi::AsyncWorker(env), path_(std::move(path)), deferred_(env) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override { status_ = lx::read_whole_file(path_, false, &bytes_); }
  void OnOK() override {
    if (!status_.ok()) return deferred_.Reject(Napi::Error::New(Env(), status_.message).Value());
    if (!bytes_.data) return deferred_.Resolve(Napi::ArrayBuffer::New(Env(), 0));
    const lx::FileBytes b = bytes_;
    bytes_ = lx::FileBytes{};
    // V8 counts an ArrayBuffer's bytes as external memory and starts a full collection when that grows by
    // 64 MB or so: every second adapter read did, and the mark-compact stalled the load 10-40 ms on a 2-core
    // machine. These bytes live as long as the adapter registry holds them (a collection cannot free them), so
    // they are taken back out of that count and put back when the buffer is freed. process.memoryUsage()
    // still reports them under external / arrayBuffers.
    const int64_t counted = int64_t(b.size);
    const size_t mapped = b.mapped;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(Env(), b.data, b.size, [mapped, counted](Napi::Env env, void* p) {
      ::munmap(p, mapped);
      Napi::MemoryManagement::AdjustExternalMemory(env, counted);
    });
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -counted);
    deferred_.Resolve(ab);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }
  ~ReadFileWorker() override { lx::release_file_bytes(&bytes_); }

 private:
  std::string path_;
  Status status_;
  lx::FileBytes bytes_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value ReadFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_invalid(env, "readFile(path): path must be a string");
  auto* w = new ReadFileWorker(env, info[0].As<Napi::String>().Utf8Value());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string what = info[0].As<Napi::String>().Utf8Value();
  int threads = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
  if (threads <= 0) threads = int(std::thread::hardware_concurrency());
  if (what == "bandwidth") return Napi::Number::New(env, lx::probe_read_bandwidth(threads));
  if (what == "fma") return Napi::Number::New(env, lx::probe_fma_flops(threads));
  throw_invalid(env, "unknown probe '" + what + "' (bandwidth | fma)");
}

// native().cuda: {compiled, usable, devices, name, computeCapability, sms, memoryBytes, runtimeVersion,
// driverVersion, error}, read on first access (that initialises the CUDA runtime; fine without a driver).
Napi::Value CudaInfoGetter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const lx::CudaInfo& c = lx::cuda_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("compiled", c.compiled);
  o.Set("usable", c.usable);
  o.Set("devices", c.devices);
  o.Set("name", c.name);
  o.Set("computeCapability", std::to_string(c.cc_major) + "." + std::to_string(c.cc_minor));
  o.Set("sms", c.sms);
  o.Set("memoryBytes", c.memory_bytes);
  o.Set("runtimeVersion", c.runtime_version);
  o.Set("driverVersion", c.driver_version);
  o.Set("error", c.error);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("loadModel", Napi::Function::New(env, LoadModel, "loadModel"));
  exports.DefineProperty(Napi::PropertyDescriptor::Accessor<CudaInfoGetter>("cuda", napi_enumerable));
  exports.Set("kernel", Napi::Function::New(env, Kernel, "kernel"));
  exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
  exports.Set("readFile", Napi::Function::New(env, ReadFile, "readFile"));
  exports.Set("fastKernels", Napi::Boolean::New(env, lx::fast::supported()));
  exports.Set("cpuBackend", Napi::String::New(env, lx::bf16dot::supported() ? "cpu-avx512bf16" : lx::wide::supported() ? "cpu-avx512" : lx::fast::supported() ? "cpu-avx2" : "cpu-reference"));
  return exports;
}

}  // namespace

NODE_API_MODULE(loraserve_native, Init)
