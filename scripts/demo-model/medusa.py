"""Medusa-2 heads trained by self-distillation: the base model writes text, and head h learns to
predict, from the final hidden state at position t, the token the base wrote at t + h + 2."""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from llama import LlamaForCausalLM


class MedusaHeads(nn.Module):
    """Head h: state = x + silu(W_h x + b_h), logits = lm_head(state), where x is the hidden state
    after model.norm (the same vector the base lm_head reads). Version 2: no per-head vocab matrix."""

    def __init__(self, num_heads: int, hidden: int):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_heads))
        for lin in self.linears:
            nn.init.zeros_(lin.weight)  # each head starts as the identity, i.e. as the base lm_head
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> list:
        return [x + F.silu(lin(x)) for lin in self.linears]

    def state_dict_v2(self) -> dict:
        """Keys as a Medusa-2 checkpoint stores them: medusa_head.{h}.0.linear.{weight,bias}."""
        out = {}
        for h, lin in enumerate(self.linears):
            out[f"medusa_head.{h}.0.linear.weight"] = lin.weight.detach()
            out[f"medusa_head.{h}.0.linear.bias"] = lin.bias.detach()
        return out


def self_generate(model: LlamaForCausalLM, prompts: list, max_new: int, stop_id: int,
                  temperature: float, generator: torch.Generator) -> list:
    """Full sequences (prompt + the base model's continuation) and each prompt's length."""
    news = model.generate(prompts, max_new, stop_id, temperature, generator)
    return [(p + n, len(p)) for p, n in zip(prompts, news)]


@torch.no_grad()
def hidden_states(model: LlamaForCausalLM, seqs: list) -> list:
    return [model.hidden(torch.tensor(s)[None])[0] for s, _ in seqs]


def training_pairs(seqs: list, states: list, num_heads: int) -> tuple:
    """Flattened inputs [N, H], and per head the target token ids [N]: the token at t + h + 2 when
    the base model generated it, else -100 (inside the prompt or past the end)."""
    xs, targets = [], [[] for _ in range(num_heads)]
    for (seq, prompt_len), st in zip(seqs, states):
        n = len(seq)
        xs.append(st)
        for h in range(num_heads):
            targets[h].extend(seq[t + h + 2] if prompt_len <= t + h + 2 < n else -100 for t in range(n))
    return torch.cat(xs), [torch.tensor(t) for t in targets]


def train(model: LlamaForCausalLM, heads: MedusaHeads, xs: torch.Tensor, targets: list,
          steps: int, batch: int, lr: float, generator: torch.Generator) -> list:
    """Cross-entropy of each head against the base model's own tokens; base frozen."""
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, xs.shape[0], (batch,), generator=generator)
        states = heads(xs[idx])
        loss = sum(F.cross_entropy(model.lm_head(s), t[idx], ignore_index=-100)
                   for s, t in zip(states, targets)) / len(states)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"[medusa] step {step + 1}/{steps} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
    return losses


@torch.no_grad()
def accuracy(model: LlamaForCausalLM, heads: MedusaHeads, seqs: list, states: list) -> list:
    """Per head, top-1 accuracy on tokens the base generated (positions past the prompt)."""
    hits = [0] * len(heads.linears)
    counts = [0] * len(heads.linears)
    for (seq, prompt_len), st in zip(seqs, states):
        preds = [model.lm_head(s).argmax(-1).tolist() for s in heads(st)]
        for h, pred in enumerate(preds):
            for t in range(len(seq)):
                target = t + h + 2
                if prompt_len <= target < len(seq):
                    hits[h] += pred[t] == seq[target]
                    counts[h] += 1
    return [hit / max(1, c) for hit, c in zip(hits, counts)]
