"""Writes the model card (README.md of the model folder) from the training log and the samples."""
import json
from pathlib import Path

import corpus
import training


def _size(path: Path) -> int:
    """Bytes in the folder, not counting the card being written."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f != path / "README.md")


def _code_cell(text: str) -> str:
    """Inline code inside a GFM table cell: pipes must be escaped even there."""
    return "`" + text.replace("|", "\\|") + "`"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _min(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def write(out: Path, s, log: dict, samples: dict) -> None:
    base = log["base"]
    tok = log["tokenizer"]
    med = log["medusa"]
    corpora = log["corpora"]
    losses = log["heldout_loss"]
    lines = []
    add = lines.append

    add("# loraserve demo model")
    add("")
    add("A very small Llama-architecture model with three LoRA adapters and a Medusa head set, trained "
        "from scratch on CPU so that loraserve has something to serve out of the box. It writes "
        "fortune-cookie-like English; the adapters turn that into King James English, German, or BOFH "
        "excuses. It knows nothing and is only meant for demos and tests.")
    add("")
    add("Everything here is produced by `scripts/demo-model/train.py` (run by `make demo-model`), "
        f"seed {log.get('seed', 1234)}, with PyTorch {log['torch']} from Debian on 2 CPU cores.")
    add("")
    add("## Files")
    add("")
    add("| path | what |")
    add("|---|---|")
    add("| `config.json`, `model.safetensors` | base model, Hugging Face Llama layout, BF16 |")
    add("| `tokenizer.json`, `tokenizer_config.json` | byte-level BPE tokenizer, chat template |")
    add("| `generation_config.json` | default sampling settings and special-token ids |")
    for name, a in log["adapters"].items():
        add(f"| `adapters/{name}/` | LoRA adapter (PEFT layout, F32): {a['description']} |")
    add("| `medusa/` | Medusa version-2 heads (`config.json`, `medusa_lm_head.safetensors`, BF16) |")
    add("| `heldout/<corpus>.txt` | a few KB of held-out documents per corpus, never trained on |")
    add("| `samples.json` | the greedy samples below with token ids and first-step top-5 logits |")
    add("| `train_log.json` | every number on this page, machine-readable |")
    add("")

    add("## Base model")
    add("")
    add("| | |")
    add("|---|---|")
    add("| architecture | `LlamaForCausalLM` (`model_type` llama) |")
    add(f"| hidden size / intermediate size | {s.hidden} / {s.intermediate} |")
    add(f"| layers | {s.layers} |")
    add(f"| attention heads / KV heads / head dim | {s.heads} / {s.kv_heads} (grouped-query) / {s.hidden // s.heads} |")
    add("| RoPE | rotate-half, theta 10000, no scaling |")
    add("| RMSNorm eps | 1e-5 |")
    add(f"| vocabulary | {tok['vocab_size']} |")
    add("| embeddings | tied: `tie_word_embeddings` true, the file has no `lm_head.weight`; lm_head = `model.embed_tokens.weight` |")
    add(f"| parameters | {base['parameters']:,} |")
    add(f"| context | `max_position_embeddings` {s.max_positions}; trained on {s.seq}-token windows of packed documents, "
        f"so text beyond ~{s.seq} tokens degrades |")
    add(f"| weights | BF16, {_mb((out / 'model.safetensors').stat().st_size)} |")
    add("")

    add("## Tokenizer and chat format")
    add("")
    add(f"Byte-level BPE (GPT-2 pre-tokenization regex, ByteLevel decoder) trained by the script: "
        f"{tok['vocab_size']} tokens = {len(corpus.SPECIAL_TOKENS)} special + 256 bytes + {tok['merges']} merges, "
        f"learned from all English fortunes, {int(s.tokenizer_extra_share * 100)}% of the German and KJV "
        "documents, and the BOFH excuses. Any UTF-8 text round-trips exactly.")
    add("")
    add("| id | token | role |")
    add("|---|---|---|")
    roles = {corpus.BOS: "BOS (`bos_token_id`)", corpus.END: "EOS (`eos_token_id`): ends documents and chat turns",
             corpus.PAD: "padding only, never trained on"}
    for i, t in enumerate(corpus.SPECIAL_TOKENS):
        add(f"| {i} | {_code_cell(t)} | {roles.get(t, 'chat role marker')} |")
    add("")
    add("The `tokenizer.json` post-processor prepends `<|bos|>` when encoding with special tokens. The chat "
        "template starts with `{{ bos_token }}`, so a rendered chat must be tokenized *without* adding "
        "special tokens again. A conversation renders as:")
    add("")
    add("```")
    add(corpus.render_chat([{"role": "system", "content": "You are a helpful assistant."},
                            {"role": "user", "content": "Tell me about love."}], add_generation_prompt=True).rstrip("\n"))
    add("```")
    add("")
    add("and the model ends its answer with `<|end|>` (id 1), the only stop token. Chat turns were part of "
        f"the base training ({int(s.base_chat_fraction * 100)}% of documents were wrapped as a user prompt and "
        "the document as the answer), so the base model follows the format.")
    add("")

    add("## Training data")
    add("")
    add("| corpus | Debian package (version) | documents (held out) | characters | licence |")
    add("|---|---|---|---|---|")
    pkg_of = {"fortunes": "fortunes", "german": "fortunes-de", "kjv": "bible-kjv-text", "bofh": "fortunes-bofh-excuses"}
    for name, c in corpora.items():
        p = pkg_of[name]
        info = log["packages"][p]
        add(f"| {name} | `{p}` ({info['version']}): {info['use']} | {c['documents']} ({c['heldout_documents']}) "
            f"| {c['characters']:,} | {info['licence']} |")
    kjv_reader = log["packages"]["bible-kjv"]
    add("")
    add(f"The KJV text is read with `bible -f Gen1:1-Rev22:21` from `bible-kjv` ({kjv_reader['version']}, "
        f"{kjv_reader['licence']}); documents are {corpus.KJV_VERSES_PER_DOC} consecutive verses without references. "
        f"Fortune files are split at `%` lines. Every {corpus.HELDOUT_EVERY}th document of each corpus is held out.")
    add("")
    add("Licensing note: the weights are derived from these texts. The German adapter (and, through the "
        "German share of its training mix, the base) learned from GPL-2+ text of `fortunes-de`.")
    add("")

    add("## Training")
    add("")
    add("| part | what | time (2 cores) | final train loss |")
    add("|---|---|---|---|")
    add(f"| tokenizer | BPE merges | {_min(tok['seconds'])} | |")
    add(f"| base | {base['steps']} steps x {s.batch} x {s.seq} tokens = {base['tokens_seen']:,} tokens; all English "
        f"fortunes per epoch plus {int(s.base_german_share * 100)}% of the German, {int(s.base_kjv_share * 100)}% of the KJV "
        f"and {int(s.base_bofh_share * 100)}% of the BOFH documents (so every token has a trained embedding); AdamW, "
        f"peak lr {s.base_lr}, cosine | {_min(base['seconds'])} | {base['final_train_loss']:.3f} |")
    for name, a in log["adapters"].items():
        add(f"| adapter `{name}` | {a['steps']} steps, {a['tokens_seen']:,} tokens of {a['corpus']}, base frozen | "
            f"{_min(a['seconds'])} | {a['final_train_loss']:.3f} |")
    add(f"| Medusa | self-generation of {med['train_sequences']} sequences ({_min(med['generation_seconds'])}), "
        f"then head training | {_min(med['seconds'])} | {med['final_train_loss']:.3f} |")
    add(f"| evaluation | held-out losses and samples | {_min(log['evaluation_seconds'])} | |")
    total = tok["seconds"] + base["seconds"] + sum(a["seconds"] for a in log["adapters"].values()) \
        + med["seconds"] + log["evaluation_seconds"]
    add(f"| total | | {_min(total)} | |")
    add("")
    add("Losses are mean next-token cross-entropy in nats; train loss is the mean of the last 50 steps "
        "(20 for Medusa). Held-out loss per corpus (raw documents, `<|bos|> text <|end|>`):")
    add("")
    names = list(corpora)
    add("| model | " + " | ".join(names) + " |")
    add("|---|" + "---|" * len(names))
    for label, row in losses.items():
        add(f"| {label} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    add("")

    add("## Adapters")
    add("")
    add("| name | style | r | lora_alpha | scale | target modules | notes |")
    add("|---|---|---|---|---|---|---|")
    for spec in s.adapters:
        notes = []
        if spec.use_rslora:
            notes.append("`use_rslora` (scale = alpha / sqrt(r))")
        if spec.rank_pattern:
            notes.append(f"`rank_pattern` `{json.dumps(spec.rank_pattern)}`")
        scales = sorted({round(spec.rank_alpha_scale(f'x.{m}')[2], 3) for m in spec.target_modules})
        add(f"| `{spec.name}` | {spec.description} | {spec.r} | {spec.lora_alpha} | {', '.join(map(str, scales))} "
            f"| {', '.join(spec.target_modules)} | {'; '.join(notes)} |")
    add("")
    shares = {f"{int(spec.chat_fraction * 100)}%" for spec in s.adapters}
    shares = shares.pop() if len(shares) == 1 else ", ".join(
        f"{int(spec.chat_fraction * 100)}% for {spec.name}" for spec in s.adapters)
    add("All use `lora_dropout` 0.05 while training, `bias` none, `fan_in_fan_out` false, and the PEFT key names "
        "`base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight` (A: [r, in], B: [out, r]). "
        f"Of each adapter's documents, {shares} were wrapped as chat answers to the same prompt pool the "
        "base saw, so the same question gets a different style per adapter.")
    for spec in s.adapters:
        if spec.plain_run_passes:
            lo, hi = training.RUN_LENGTH
            add("")
            add(f"`{spec.name}` also trains on {spec.plain_run_passes} more passes per epoch over its documents, grouped "
                f"at random into runs of {lo} to {hi} documents in file order and laid out as plain text, each "
                f"followed by a blank line (the layout of `heldout/{spec.corpus}.txt`), never as chat; so it "
                "continues text past one document the way the source file does.")
    add("")
    a, b = log["merged_pair"]
    add(f"The merged pair below is the linear merge of `{a}` and `{b}` with weights 0.5 / 0.5 as LoRAX's "
        "`linear` merge applies it to LoRA factors: A = 0.5 A1 + 0.5 A2 and B = 0.5 B1 + 0.5 B2 per module (both adapters have the "
        "same rank, alpha and targets), scale unchanged.")
    add("")

    add("## Medusa heads")
    add("")
    add(f"`medusa/config.json`: `medusa_num_heads` {med['heads']}, `medusa_num_layers` 1, `version` 2. Weights "
        "`medusa_head.{h}.0.linear.weight` [H, H] and `.bias` [H], no per-head vocabulary matrix.")
    add("")
    add("How they are applied, exactly: let x_t be the last layer's hidden state at position t **after** the "
        "final `model.norm` (the vector the base `lm_head` reads). Head h (0-based) computes "
        "`s = x_t + silu(W_h x_t + b_h)` and `logits_h = lm_head(s)` with the base (tied) `lm_head`. "
        "The base `lm_head(x_t)` predicts token t+1; head h predicts token **t + h + 2** "
        "(head 0: the token after next).")
    add("")
    add(f"Trained by self-distillation: the base model continued {med['train_sequences']} prompts (first four tokens "
        f"of an English fortune, or a chat prompt), half greedily and half sampled at temperature 0.8, up to "
        f"{s.medusa_max_new} new tokens ({med['train_tokens']:,} tokens in all); the heads were trained with "
        "cross-entropy against the tokens the base model wrote, base frozen, weights and biases starting at zero.")
    add("")
    add(f"Top-1 accuracy on {med['heldout_sequences']} held-out greedy self-generations (prompts from held-out "
        "documents), counting positions whose target is a generated token:")
    add("")
    add("| head | predicts | top-1 accuracy |")
    add("|---|---|---|")
    for h, acc in enumerate(med["heldout_top1"]):
        add(f"| {h} | t + {h + 2} | {acc:.3f} |")
    add("")

    add("## Samples")
    add("")
    add(f"Same prompts for every variant, up to {s.sample_max_new} new tokens, float32 arithmetic on the BF16 "
        "weights. *greedy* is what the engine must reproduce token for token (`samples.json` has the ids); "
        f"*sampled* is one draw at temperature {log['sampling']['temperature']} with top-p {log['sampling']['top_p']} "
        "(the `generation_config.json` defaults), closer to "
        "what a chat user sees. Completions start with `<|bos|>`; chat prompts are one user turn rendered with "
        "the chat template and the generation prompt. A tiny model loops under greedy decoding.")
    add("")
    first = next(iter(samples.values()))
    for i, entry in enumerate(first):
        add(f"### {entry['kind']}: \"{entry['prompt']}\"")
        add("")
        for label, rows in samples.items():
            add(f"**{label}**")
            add("")
            add("```")
            for mode, key in (("greedy", "output"), ("sampled", "sampled")):
                text = rows[i][key]
                text = (entry["prompt"] + text if entry["kind"] == "completion" else text).rstrip() or "(empty)"
                add(f"[{mode}] {text}")
            add("```")
            add("")

    add("## Reproducing")
    add("")
    add("```")
    add("apt-get install python3-torch libopenblas0-pthread fortunes fortunes-de fortunes-bofh-excuses bible-kjv")
    add("/usr/bin/python3 scripts/demo-model/train.py --out models/demo")
    add("```")
    add("")
    add("Seeds are fixed; on the same packages and thread count the run repeats, though float summation order "
        "in the BLAS can differ across machines. The sizes above total "
        f"{_mb(_size(out) + len(chr(10).join(lines).encode()))} for this folder.")
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
