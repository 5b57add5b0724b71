"""The Llama decoder written out from the Hugging Face definition (rotate-half RoPE, RMSNorm in
float32, grouped-query attention, SiLU-gated MLP), with optional LoRA deltas and a KV cache.
Module names equal the HF checkpoint keys, so state_dict() is the on-disk layout."""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 2

    def to_hf(self) -> dict:
        out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        out.update(asdict(self))
        out.update({
            "hidden_act": "silu",
            "tie_word_embeddings": True,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "rope_scaling": None,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "torch_dtype": "bfloat16",
        })
        return out


class Linear(nn.Module):
    """y = x W^T (W is [out, in]); while a LoRA is attached, y += scale * B(A(dropout(x)))."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.lora_A = None
        self.lora_B = None
        self.lora_scale = 0.0
        self.lora_dropout = 0.0

    def attach_lora(self, a: torch.Tensor, b: torch.Tensor, scale: float, dropout: float) -> None:
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)
        self.lora_scale = scale
        self.lora_dropout = dropout

    def detach_lora(self) -> None:
        self.lora_A = None
        self.lora_B = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.lora_A is not None:
            h = F.dropout(x, self.lora_dropout, self.training)
            y = y + F.linear(F.linear(h, self.lora_A), self.lora_B) * self.lora_scale
        return y


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(cfg: Config, positions: torch.Tensor):
    """cos and sin, [T, head_dim], each frequency repeated for both halves of the head."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(d, cfg.num_attention_heads * hd)
        self.k_proj = Linear(d, cfg.num_key_value_heads * hd)
        self.v_proj = Linear(d, cfg.num_key_value_heads * hd)
        self.o_proj = Linear(cfg.num_attention_heads * hd, d)

    def forward(self, x, cos, sin, mask, cache):
        cfg = self.cfg
        b, t, _ = x.shape
        n_kv, group, hd = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x).view(b, t, cfg.num_attention_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, n_kv, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, n_kv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # Query head i reads key/value head i // group (HF's repeat_kv); grouping the queries
        # per KV head avoids copying K and V.
        s = k.shape[2]
        q = q.reshape(b, n_kv, group * t, hd)
        scores = (q @ k.transpose(-1, -2)).view(b, n_kv, group, t, s) / math.sqrt(hd) + mask
        probs = scores.softmax(-1).view(b, n_kv, group * t, s)
        y = (probs @ v).view(b, cfg.num_attention_heads, t, hd).transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """lm_head is tied to model.embed_tokens (tie_word_embeddings = true)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        std = 0.02
        residual_std = std / math.sqrt(2 * self.cfg.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, residual_std, generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)

    def hidden(self, ids: torch.Tensor, caches: list | None = None) -> torch.Tensor:
        """Final hidden states after model.norm, [B, T, H]. With caches (one dict per layer),
        ids continue the sequences already cached."""
        t = ids.shape[1]
        past = caches[0]["k"].shape[2] if caches and "k" in caches[0] else 0
        cos, sin = rope_tables(self.cfg, torch.arange(past, past + t))
        mask = torch.full((t, past + t), float("-inf")).triu(past + 1)
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, caches[i] if caches is not None else None)
        return self.model.norm(x)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.model.embed_tokens.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(ids))

    def projections(self):
        """(checkpoint module name, Linear) for every LoRA-targetable projection."""
        for i, layer in enumerate(self.model.layers):
            for kind, block in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
                for proj in PROJECTIONS:
                    if hasattr(block, proj):
                        yield f"model.layers.{i}.{kind}.{proj}", getattr(block, proj)

    def detach_lora(self) -> None:
        for _, lin in self.projections():
            lin.detach_lora()

    @torch.no_grad()
    def generate(self, prompts: list, max_new: int, stop_id: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, top_p: float = 1.0) -> list:
        """Continues each prompt (a list of ids) until stop_id or max_new tokens; greedy when
        temperature is 0, else sampling (nucleus when top_p < 1). Prompts of equal length run as
        one batch. Returns the new ids."""
        out = [None] * len(prompts)
        by_len = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for idxs in by_len.values():
            ids = torch.tensor([prompts[i] for i in idxs])
            caches = [{} for _ in self.model.layers]
            new = [[] for _ in idxs]
            done = [False] * len(idxs)
            step_input = ids
            for _ in range(max_new):
                logits = self.lm_head(self.hidden(step_input, caches)[:, -1])
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    if top_p < 1.0:
                        sorted_probs, order = probs.sort(dim=-1, descending=True)
                        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
                        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
                    nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
                else:
                    nxt = logits.argmax(-1)
                for j, tok in enumerate(nxt.tolist()):
                    if not done[j]:
                        new[j].append(tok)
                        done[j] = tok == stop_id
                if all(done):
                    break
                step_input = nxt[:, None]
            for j, i in enumerate(idxs):
                out[i] = new[j]
        return out
