"""Training and evaluation loops: token streams from documents, base-model pretraining, LoRA
training on the frozen base, held-out losses."""
import math
import random
import re
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import corpus
from llama import LlamaForCausalLM


class Encoder:
    """Documents to token ids, raw (bos text end) or as a chat exchange."""

    def __init__(self, tok):
        self.tok = tok
        self.bos = tok.special_ids[corpus.BOS]
        self.end = tok.special_ids[corpus.END]

    def raw(self, doc: str) -> list:
        return [self.bos] + self.tok.encode(doc) + [self.end]

    def chat(self, name: str, doc: str, rng: random.Random) -> list:
        return self.tok.encode_with_specials(corpus.as_chat(name, doc, rng))


RUN_LENGTH = (2, 8)  # documents per plain-text run


def plain_runs(docs: list, passes: int, rng: random.Random) -> list:
    """`passes` fresh groupings of all documents into runs of RUN_LENGTH documents, each run in the
    documents' original order and laid out as plain text (corpus.plain_text)."""
    runs = []
    for _ in range(passes):
        order = list(range(len(docs)))
        rng.shuffle(order)
        i = 0
        while i < len(order):
            k = rng.randint(*RUN_LENGTH)
            runs.append(corpus.plain_text([docs[j] for j in sorted(order[i:i + k])]))
            i += k
    return runs


def epoch_stream(enc: Encoder, parts: list, rng: random.Random) -> list:
    """One pass over a mixture: parts are (corpus name, docs, share of docs to use, chat fraction) with an
    optional fifth element, the number of extra passes over the docs as plain-text runs (never chat).
    Documents are shuffled together and concatenated."""
    items = []
    for name, docs, share, chat_fraction, *rest in parts:
        chosen = docs if share >= 1 else rng.sample(docs, int(len(docs) * share))
        items.extend((name, d, chat_fraction) for d in chosen)
        if rest and rest[0] > 0:
            items.extend((name, run, 0.0) for run in plain_runs(docs, rest[0], rng))
    rng.shuffle(items)
    stream = []
    for name, doc, chat_fraction in items:
        stream.extend(enc.chat(name, doc, rng) if rng.random() < chat_fraction else enc.raw(doc))
    return stream


def batches(enc: Encoder, parts: list, batch: int, seq: int, seed: int):
    """Endless [batch, seq+1] windows: each epoch re-mixes the documents and shuffles the windows."""
    rng = random.Random(seed)
    while True:
        stream = epoch_stream(enc, parts, rng)
        n = (len(stream) - 1) // seq
        data = torch.tensor(stream[:n * seq + 1])
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch + 1, batch):
            yield torch.stack([data[j * seq:j * seq + seq + 1] for j in order[i:i + batch]])


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class RunLog:
    losses: list = field(default_factory=list)
    seconds: float = 0.0

    def final_train_loss(self) -> float:
        tail = self.losses[-50:]
        return sum(tail) / len(tail)


def optimise(model, params: list, data, steps: int, peak_lr: float, warmup: int,
             weight_decay: float, label: str, log_every: int = 25) -> RunLog:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak_lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    log = RunLog()
    start = time.time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, warmup)
        x = next(data)
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        log.losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            elapsed = time.time() - start
            print(f"[{label}] step {step + 1}/{steps} loss {loss.item():.3f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s", flush=True)
    model.eval()
    log.seconds = time.time() - start
    return log


@torch.no_grad()
def heldout_loss(model: LlamaForCausalLM, enc: Encoder, docs: list, seq: int) -> float:
    """Mean next-token loss (nats) over the held-out documents, raw format, packed in windows."""
    stream = [t for d in docs for t in enc.raw(d)]
    total, count = 0.0, 0
    for i in range(0, len(stream) - 1, seq):
        x = torch.tensor(stream[i:i + seq + 1])[None]
        logits = model(x[:, :-1])
        total += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
    return total / count


# ---- LoRA ------------------------------------------------------------------------------------

@dataclass
class AdapterSpec:
    name: str
    corpus: str
    description: str
    r: int
    lora_alpha: int
    target_modules: list
    steps: int
    lr: float
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    lora_dropout: float = 0.05
    chat_fraction: float = 0.5
    # Extra passes per epoch over the documents grouped into plain-text runs (training.plain_runs):
    # teaches text that continues past a document, as in a fortune file or a held-out slice.
    plain_run_passes: int = 0

    def pattern_value(self, pattern: dict, module: str, default):
        """PEFT's lookup: a key matches a module whose name ends with it at a dot boundary."""
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    def rank_alpha_scale(self, module: str) -> tuple:
        r = self.pattern_value(self.rank_pattern, module, self.r)
        alpha = self.pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return r, alpha, alpha / (math.sqrt(r) if self.use_rslora else r)


def targeted(model: LlamaForCausalLM, spec: AdapterSpec):
    for name, lin in model.projections():
        if name.rsplit(".", 1)[1] in spec.target_modules:
            yield name, lin


def attach_new_lora(model: LlamaForCausalLM, spec: AdapterSpec, generator: torch.Generator) -> list:
    """PEFT's initialisation: A ~ kaiming-uniform(a=sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
    params = []
    for name, lin in targeted(model, spec):
        r, _, scale = spec.rank_alpha_scale(name)
        n_out, n_in = lin.weight.shape
        bound = 1.0 / math.sqrt(n_in)
        a = (torch.rand(r, n_in, generator=generator) * 2 - 1) * bound
        lin.attach_lora(a, torch.zeros(n_out, r), scale, spec.lora_dropout)
        params += [lin.lora_A, lin.lora_B]
    return params


def attach_lora_tensors(model: LlamaForCausalLM, spec: AdapterSpec, tensors: dict) -> None:
    """Attaches saved A/B tensors ({module name: (A, B)}) for inference."""
    for name, lin in targeted(model, spec):
        _, _, scale = spec.rank_alpha_scale(name)
        a, b = tensors[name]
        lin.attach_lora(a.clone(), b.clone(), scale, 0.0)


def lora_tensors(model: LlamaForCausalLM) -> dict:
    return {name: (lin.lora_A.detach().clone(), lin.lora_B.detach().clone())
            for name, lin in model.projections() if lin.lora_A is not None}


def peft_state_dict(tensors: dict) -> dict:
    """PEFT's on-disk names: base_model.model.<module>.lora_A.weight / lora_B.weight."""
    out = {}
    for name, (a, b) in tensors.items():
        out[f"base_model.model.{name}.lora_A.weight"] = a
        out[f"base_model.model.{name}.lora_B.weight"] = b
    return out


def linear_merge(parts: list) -> dict:
    """Linear merge as LoRAX applies it to LoRA factors: A = sum w_i A_i and B = sum w_i B_i,
    module by module. parts: [(weight, {module: (A, B)})], all with the same modules and ranks."""
    modules = parts[0][1].keys()
    return {m: (sum(w * t[m][0] for w, t in parts), sum(w * t[m][1] for w, t in parts)) for m in modules}


def peft_config(spec: AdapterSpec, base_name: str) -> dict:
    """adapter_config.json with the full key set PEFT (0.17) writes for a LoraConfig."""
    return {
        "alpha_pattern": spec.alpha_pattern,
        "auto_mapping": None,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "corda_config": None,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": spec.lora_alpha,
        "lora_bias": False,
        "lora_dropout": spec.lora_dropout,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "qalora_group_size": 16,
        "r": spec.r,
        "rank_pattern": spec.rank_pattern,
        "revision": None,
        "target_modules": sorted(spec.target_modules),
        "target_parameters": None,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": None,
        "use_dora": False,
        "use_qalora": False,
        "use_rslora": spec.use_rslora,
    }
