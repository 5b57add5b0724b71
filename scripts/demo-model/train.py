"""Entry point: builds the whole demo model folder (tokenizer, Llama base, LoRA adapters, Medusa
heads, held-out slices, samples, model card) from Debian's text packages. Usage:
    /usr/bin/python3 scripts/demo-model/train.py --out models/demo"""
import argparse
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

# The CPU is shared (other builds run beside training): spinning OpenMP workers and a second BLAS
# thread pool on top of torch's make every step several times slower, so wait passively and let
# torch own the threads. Must be set before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

import bpe
import card
import corpus
import medusa
import safetensors_io
import training
from llama import Config, LlamaForCausalLM

SEED = 1234
BASE_NAME = "models/demo"  # base_model_name_or_path written into the adapters and Medusa config
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Settings:
    vocab_size: int = 8192
    hidden: int = 256
    intermediate: int = 688
    layers: int = 6
    heads: int = 8
    kv_heads: int = 4
    max_positions: int = 1024
    seq: int = 256
    batch: int = 8
    base_steps: int = 850
    base_lr: float = 2e-3
    warmup: int = 60
    # Shares of the other corpora's documents mixed into each base epoch (English fortunes: all),
    # so that every token the adapters need has a trained embedding.
    base_german_share: float = 0.1
    base_kjv_share: float = 0.06
    base_bofh_share: float = 0.5
    base_chat_fraction: float = 0.3
    tokenizer_extra_share: float = 0.3
    medusa_heads: int = 3
    medusa_prompts: int = 480
    medusa_heldout_prompts: int = 64
    medusa_max_new: int = 80
    medusa_steps: int = 150
    medusa_batch: int = 1024
    sample_max_new: int = 48
    adapters: list = field(default_factory=lambda: [
        training.AdapterSpec(
            name="kjv", corpus="kjv", description="King James Bible English",
            r=16, lora_alpha=32, target_modules=ALL_PROJ, steps=120, lr=2e-3),
        training.AdapterSpec(
            name="german", corpus="german", description="German (fortunes-de)",
            r=16, lora_alpha=32, target_modules=ALL_PROJ, steps=160, lr=2e-3),
        # The BOFH file is tiny (28 KB, 444 training excuses): besides single excuses it trains on
        # runs of several excuses laid out as plain text, the layout of heldout/bofh.txt; o_proj adds
        # capacity that does not overfit the way the MLP projections do. use_rslora and rank_pattern
        # keep the engine's per-module scales exercised (5.657 and 8.0).
        training.AdapterSpec(
            name="bofh", corpus="bofh", description="BOFH excuses",
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], use_rslora=True,
            rank_pattern={"v_proj": 4}, steps=100, lr=3e-3, chat_fraction=0.5, plain_run_passes=3),
    ])


QUICK = dict(vocab_size=1024, layers=2, base_steps=10, medusa_prompts=16, medusa_heldout_prompts=4,
             medusa_max_new=16, medusa_steps=5, sample_max_new=8)

COMPLETION_PROMPTS = ["The meaning of life is", "My computer", "Love is"]
CHAT_PROMPTS = ["Tell me about love.", "What do you think about computers?", "Why is the server down?"]
MERGED_PAIR = ("kjv", "german")
SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # generation_config.json defaults, also used for samples


def model_config(s: Settings, tok: bpe.Tokenizer) -> Config:
    return Config(vocab_size=len(tok), hidden_size=s.hidden, intermediate_size=s.intermediate,
                  num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                  head_dim=s.hidden // s.heads, max_position_embeddings=s.max_positions,
                  bos_token_id=tok.special_ids[corpus.BOS], eos_token_id=tok.special_ids[corpus.END],
                  pad_token_id=tok.special_ids[corpus.PAD])


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tokenizer(s: Settings, splits: dict, rng: random.Random) -> bpe.Tokenizer:
    """Merges learned on all English fortunes plus a share of German and KJV and the BOFH excuses."""
    counts = Counter()
    for name, (train_docs, _) in splits.items():
        docs = train_docs if name in ("fortunes", "bofh") else rng.sample(
            train_docs, int(len(train_docs) * s.tokenizer_extra_share))
        for d in docs:
            counts.update(bpe.pretokenize(d))
    merges = bpe.train(counts, s.vocab_size - len(corpus.SPECIAL_TOKENS) - 256)
    return bpe.Tokenizer(corpus.SPECIAL_TOKENS, merges)


def tokenizer_config(tok: bpe.Tokenizer, max_positions: int) -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(tok.special_ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True}
            for t in corpus.SPECIAL_TOKENS
        },
        "bos_token": corpus.BOS,
        "chat_template": corpus.CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": corpus.END,
        "model_max_length": max_positions,
        "pad_token": corpus.PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def round_to_bf16(model: torch.nn.Module) -> None:
    """The shipped weights are BF16: later stages must see exactly those values."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def load_base(out: Path) -> tuple:
    tok = bpe.Tokenizer.from_hf_json(json.loads((out / "tokenizer.json").read_text(encoding="utf-8")))
    hf = json.loads((out / "config.json").read_text())
    cfg = Config(**{k: hf[k] for k in Config.__dataclass_fields__})
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(safetensors_io.load(out / "model.safetensors"))
    model.eval()
    return tok, model


def train_base(s: Settings, out: Path, splits: dict, log: dict) -> None:
    rng = random.Random(SEED)
    start = time.time()
    tok = build_tokenizer(s, splits, rng)
    log["tokenizer"] = {"vocab_size": len(tok), "merges": len(tok.merges), "seconds": time.time() - start}
    print(f"tokenizer: {len(tok)} tokens in {time.time() - start:.0f}s", flush=True)
    write_json(out / "tokenizer.json", tok.to_hf_json(bos=corpus.BOS))
    write_json(out / "tokenizer_config.json", tokenizer_config(tok, s.max_positions))

    cfg = model_config(s, tok)
    model = LlamaForCausalLM(cfg)
    model.init_weights(torch.Generator().manual_seed(SEED))
    enc = training.Encoder(tok)
    parts = [("fortunes", splits["fortunes"][0], 1.0, s.base_chat_fraction),
             ("german", splits["german"][0], s.base_german_share, s.base_chat_fraction),
             ("kjv", splits["kjv"][0], s.base_kjv_share, s.base_chat_fraction),
             ("bofh", splits["bofh"][0], s.base_bofh_share, s.base_chat_fraction)]
    data = training.batches(enc, parts, s.batch, s.seq, SEED)
    run = training.optimise(model, list(model.parameters()), data, s.base_steps, s.base_lr, s.warmup,
                            weight_decay=0.1, label="base")
    round_to_bf16(model)
    safetensors_io.save(model.state_dict(), out / "model.safetensors", torch.bfloat16)
    write_json(out / "config.json", cfg.to_hf())
    write_json(out / "generation_config.json", {
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "do_sample": True, **SAMPLING,
    })
    log["base"] = {"steps": s.base_steps, "tokens_seen": s.base_steps * s.batch * s.seq,
                   "seconds": run.seconds, "final_train_loss": run.final_train_loss(),
                   "parameters": sum(p.numel() for p in model.parameters())}


def train_adapters(s: Settings, out: Path, splits: dict, log: dict, only: list | None = None) -> None:
    """Trains every adapter, or only those named in `only` (same seeds as in a full run)."""
    tok, model = load_base(out)
    for p in model.parameters():
        p.requires_grad_(False)
    enc = training.Encoder(tok)
    for i, spec in enumerate(s.adapters):
        if only and spec.name not in only:
            continue
        gen = torch.Generator().manual_seed(SEED + i)
        params = training.attach_new_lora(model, spec, gen)
        parts = [(spec.corpus, splits[spec.corpus][0], 1.0, spec.chat_fraction, spec.plain_run_passes)]
        data = training.batches(enc, parts, s.batch, s.seq, SEED + i)
        torch.manual_seed(SEED + i)  # LoRA dropout masks
        run = training.optimise(model, params, data, spec.steps, spec.lr, warmup=20,
                                weight_decay=0.0, label=spec.name)
        folder = out / "adapters" / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        safetensors_io.save(training.peft_state_dict(training.lora_tensors(model)),
                            folder / "adapter_model.safetensors", torch.float32)
        write_json(folder / "adapter_config.json", training.peft_config(spec, BASE_NAME))
        model.detach_lora()
        log["adapters"][spec.name] = {
            "corpus": spec.corpus, "description": spec.description, "r": spec.r, "lora_alpha": spec.lora_alpha,
            "target_modules": spec.target_modules, "use_rslora": spec.use_rslora,
            "rank_pattern": spec.rank_pattern, "chat_fraction": spec.chat_fraction,
            "plain_run_passes": spec.plain_run_passes,
            "steps": spec.steps, "tokens_seen": spec.steps * s.batch * s.seq,
            "seconds": run.seconds, "final_train_loss": run.final_train_loss(),
            "parameters": sum(p.numel() for p in params),
        }


def load_adapter(out: Path, spec: training.AdapterSpec) -> dict:
    flat = safetensors_io.load(out / "adapters" / spec.name / "adapter_model.safetensors")
    names = {k[len("base_model.model."):-len(".lora_A.weight")] for k in flat if k.endswith(".lora_A.weight")}
    return {n: (flat[f"base_model.model.{n}.lora_A.weight"], flat[f"base_model.model.{n}.lora_B.weight"])
            for n in names}


def variants(s: Settings, out: Path):
    """(label, spec or None, LoRA tensors or None) for the base, each adapter and the merged pair."""
    specs = {a.name: a for a in s.adapters}
    loaded = {name: load_adapter(out, spec) for name, spec in specs.items()}
    yield "base", None, None
    for name, spec in specs.items():
        yield name, spec, loaded[name]
    a, b = MERGED_PAIR
    merged = training.linear_merge([(0.5, loaded[a]), (0.5, loaded[b])])
    yield f"{a}+{b} (linear 0.5/0.5)", specs[a], merged


def evaluate(s: Settings, out: Path, splits: dict, log: dict) -> dict:
    """Held-out losses of every variant on every corpus (into log) and greedy samples with the
    first step's top-5 logits (returned), all from the files on disk."""
    start = time.time()
    tok, model = load_base(out)
    enc = training.Encoder(tok)
    log["heldout_loss"] = {}
    prompts = [("completion", p, [enc.bos] + tok.encode(p)) for p in COMPLETION_PROMPTS]
    prompts += [("chat", p, tok.encode_with_specials(
        corpus.render_chat([{"role": "user", "content": p}], add_generation_prompt=True))) for p in CHAT_PROMPTS]
    samples = {}
    for label, spec, tensors in variants(s, out):
        model.detach_lora()
        if spec is not None:
            training.attach_lora_tensors(model, spec, tensors)
        log["heldout_loss"][label] = {name: training.heldout_loss(model, enc, held, s.seq)
                                      for name, (_, held) in splits.items()}
        samples[label] = []
        for kind, prompt, ids in prompts:
            with torch.no_grad():
                top = model(torch.tensor(ids)[None])[0, -1].topk(5)
            new = model.generate([ids], s.sample_max_new, enc.end)[0]
            sampled = model.generate([ids], s.sample_max_new, enc.end, SAMPLING["temperature"],
                                     torch.Generator().manual_seed(SEED), SAMPLING["top_p"])[0]
            samples[label].append({
                "kind": kind, "prompt": prompt, "prompt_ids": ids, "output_ids": new,
                "output": tok.decode(new, skip_special=True),
                "sampled": tok.decode(sampled, skip_special=True),
                "first_step_top5": {"ids": top.indices.tolist(), "logits": [round(v, 4) for v in top.values.tolist()]},
            })
        print(f"[eval] {label}: {log['heldout_loss'][label]}", flush=True)
    model.detach_lora()
    log["evaluation_seconds"] = time.time() - start
    return samples


def train_medusa(s: Settings, out: Path, splits: dict, log: dict) -> None:
    tok, model = load_base(out)
    for p in model.parameters():
        p.requires_grad_(False)
    enc = training.Encoder(tok)
    rng = random.Random(SEED)
    gen = torch.Generator().manual_seed(SEED)
    start = time.time()

    def prompts(docs: list, n: int) -> list:
        """Half: the first four tokens of a fortune; half: a chat prompt about it."""
        out_ = []
        for d in rng.sample(docs, n):
            if rng.random() < 0.5:
                out_.append([enc.bos] + tok.encode(d)[:4])
            else:
                text = corpus.render_chat([{"role": "user", "content": corpus.chat_prompt("fortunes", d, rng)}],
                                          add_generation_prompt=True)
                out_.append(tok.encode_with_specials(text))
        return out_

    train_prompts = prompts(splits["fortunes"][0], s.medusa_prompts)
    half = len(train_prompts) // 2
    seqs = (medusa.self_generate(model, train_prompts[:half], s.medusa_max_new, enc.end, 0.0, gen)
            + medusa.self_generate(model, train_prompts[half:], s.medusa_max_new, enc.end, 0.8, gen))
    held = medusa.self_generate(model, prompts(splits["fortunes"][1], s.medusa_heldout_prompts),
                                s.medusa_max_new, enc.end, 0.0, gen)
    gen_seconds = time.time() - start
    states = medusa.hidden_states(model, seqs)
    held_states = medusa.hidden_states(model, held)
    heads = medusa.MedusaHeads(s.medusa_heads, s.hidden)
    xs, targets = medusa.training_pairs(seqs, states, s.medusa_heads)
    losses = medusa.train(model, heads, xs, targets, s.medusa_steps, s.medusa_batch, 1e-3, gen)
    acc = medusa.accuracy(model, heads, held, held_states)
    folder = out / "medusa"
    folder.mkdir(parents=True, exist_ok=True)
    safetensors_io.save(heads.state_dict_v2(), folder / "medusa_lm_head.safetensors", torch.bfloat16)
    write_json(folder / "config.json", {
        "base_model_name_or_path": BASE_NAME,
        "hidden_size": s.hidden,
        "medusa_num_heads": s.medusa_heads,
        "medusa_num_layers": 1,
        "version": 2,
        "vocab_size": len(tok),
        "medusa_input": "last-layer hidden state after model.norm (the lm_head input) at position t",
        "medusa_head_output": "head h: logits = lm_head(x + silu(W_h x + b_h)), predicting the token at t + h + 2",
    })
    log["medusa"] = {
        "heads": s.medusa_heads, "train_sequences": len(seqs), "train_tokens": sum(len(q) for q, _ in seqs),
        "heldout_sequences": len(held), "generation_seconds": gen_seconds,
        "seconds": time.time() - start, "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "heldout_top1": acc,
    }
    print(f"[medusa] held-out top-1 per head: {acc}", flush=True)


def write_heldout(out: Path, splits: dict, limit: int = 4000) -> None:
    """A few KB of held-out documents per corpus, joined by blank lines, cut at a document end."""
    folder = out / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (_, held) in splits.items():
        docs, size = [], 0
        for d in held:
            if size + len(d) > limit and docs:
                break
            docs.append(d)
            size += len(d) + 2
        (folder / f"{name}.txt").write_text(corpus.plain_text(docs), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models/demo"))
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the pipeline in a minute")
    ap.add_argument("--reuse-base", action="store_true",
                    help="keep the tokenizer and base already in --out; redo adapters, Medusa, samples, card")
    ap.add_argument("--only-adapter", action="append", metavar="NAME",
                    help="keep the tokenizer, base, Medusa heads and other adapters in --out (and their log "
                         "entries); retrain only this adapter (repeatable), then redo evaluation, samples, card")
    args = ap.parse_args()
    names = [a.name for a in Settings().adapters]
    if args.only_adapter and not set(args.only_adapter) <= set(names):
        ap.error(f"--only-adapter: choose from {names}")
    partial = args.reuse_base or bool(args.only_adapter)
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    s = Settings()
    if args.quick:
        s = replace(s, **QUICK, adapters=[replace(a, steps=5) for a in s.adapters])
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.json"
    log = json.loads(log_path.read_text()) if partial else {}
    log["corpora"] = {}
    log["packages"] = {p: {"version": corpus.package_version(p), "use": use, "licence": lic}
                       for p, (use, lic) in corpus.PACKAGES.items()}
    log["torch"] = torch.__version__
    log["seed"] = SEED
    log["merged_pair"] = MERGED_PAIR
    log["sampling"] = SAMPLING
    kept = log.get("adapters", {}) if args.only_adapter else {}
    log["adapters"] = {a.name: kept[a.name] for a in s.adapters if a.name in kept}  # in spec order
    docs = corpus.load()
    splits = {name: corpus.split(d) for name, d in docs.items()}
    for name, (train_docs, held) in splits.items():
        log["corpora"][name] = {"documents": len(train_docs) + len(held), "heldout_documents": len(held),
                                "characters": sum(map(len, train_docs)) + sum(map(len, held))}
    if not partial:
        train_base(s, out, splits, log)
    train_adapters(s, out, splits, log, args.only_adapter)
    log["adapters"] = {a.name: log["adapters"][a.name] for a in s.adapters}
    if not args.only_adapter:
        train_medusa(s, out, splits, log)
    samples = evaluate(s, out, splits, log)
    write_json(out / "samples.json", {
        "about": "output_ids/output: greedy decoding in float32 from the BF16 weights on disk; sampled: "
                 f"one draw at {SAMPLING} with torch seed {SEED}; chat prompts rendered with the chat "
                 "template; LoRA applied as W x + scale * B A x.",
        "max_new_tokens": s.sample_max_new, "samples": samples})
    write_heldout(out, splits)
    write_json(log_path, log)
    card.write(out, s, log, samples)
    print(f"done: {out}", flush=True)


if __name__ == "__main__":
    main()
