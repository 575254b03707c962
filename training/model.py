"""A Mixtral-style decoder: plain PyTorch, one process, no distributed code. Parallelism is applied afterwards as a
transform over the built model (`training.fsep.apply`), which swaps each block's `moe` for a distributed layer holding
the same weights.

Notation: B sequences, S positions, V vocabulary, H hidden, F expert FFN size, E experts, k routes per token,
n_h query heads, n_kv key/value heads (n_h / n_kv query heads share one), D = H / n_h head dimension, L layers.

Block l: x += attn(norm(x)); x += moe(norm(x)). attn: rotary attention over grouped KV heads through
`scaled_dot_product_attention` (causal); moe: a `training.moe.reference.ReferenceMoE` (router + SwiGLU experts).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.moe.reference import ReferenceMoE

# The standard deviation of every dense weight at init (embedding, attention projections, LM head), as in Mixtral's
# public config (initializer_range). The experts and router keep ReferenceMoE's own 1/sqrt(fan-in) init.
INIT_STD = 0.02


@dataclass(frozen=True)
class ModelConfig:
    # Token vocabulary V (embedding rows and LM-head outputs); must cover the tokenizer's ids.
    vocab_size: int
    # Model width H (residual stream, router input, expert input/output).
    hidden: int
    # Expert FFN size F: each SwiGLU expert is w1, w3 [F, H] and w2 [H, F].
    ffn: int
    # Decoder blocks L, each attention + one MoE FFN.
    num_layers: int
    # Query heads n_h; head dimension D = hidden / num_heads (even, for the rotary pairs).
    num_heads: int
    # Key/value heads n_kv (grouped-query attention); divides num_heads. num_kv_heads = num_heads is plain MHA.
    num_kv_heads: int
    # Experts E per MoE layer.
    num_experts: int
    # Experts k each token is routed to.
    top_k: int
    # Longest sequence S the rotary table covers.
    max_seq_len: int
    # Rotary base (Mixtral: 1e6).
    rope_theta: float = 1e6
    # RMSNorm epsilon.
    norm_eps: float = 1e-5
    # Bias on the Q, K and V projections (Qwen-style); Mixtral has none.
    qkv_bias: bool = False
    # The LM head reuses the embedding matrix.
    tie_embeddings: bool = False
    # Weight of the summed per-layer load-balancing loss in DecoderOutput.aux_loss (0: reported as zero, no effect).
    aux_loss_coef: float = 0.0

    def __post_init__(self):
        positive = ("vocab_size", "hidden", "ffn", "num_layers", "num_heads", "num_kv_heads", "num_experts", "top_k",
                    "max_seq_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.num_heads or (self.hidden // self.num_heads) % 2:
            raise ValueError(f"model.hidden ({self.hidden}) must be num_heads ({self.num_heads}) times an even head "
                             "dimension")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        if self.top_k > self.num_experts:
            raise ValueError(f"model.top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    def num_parameters(self) -> int:
        """Parameter count of MoEDecoder(self), from the shapes alone (nothing allocated)."""
        h, d = self.hidden, self.head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0)
        moe = self.num_experts * h + self.num_experts * 3 * self.ffn * h  # router + experts
        block = attn + moe + 2 * h  # + two RMSNorm weights
        head = 0 if self.tie_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * block + h + head


def _schema_fields():
    hints = typing.get_type_hints(ModelConfig)
    out = []
    for f in dataclasses.fields(ModelConfig):
        default = f.default if f.default is not dataclasses.MISSING else "???"  # OmegaConf's "must be set"
        out.append((f.name, hints[f.name], dataclasses.field(default=default)))
    return out


# The Hydra schema of a `conf/model/*.yaml` file: ModelConfig's fields, types and defaults, not frozen (OmegaConf makes
# a frozen dataclass read-only, which would reject command-line overrides). Built from ModelConfig so the two never
# drift; `ModelConfig(**cfg)` turns a composed section back into the library config.
ModelSchema = dataclasses.make_dataclass("ModelSchema", _schema_fields())
ModelSchema.__module__ = __name__
ModelSchema.__doc__ = "Hydra schema of ModelConfig (same fields; see ModelConfig for each field's meaning)."


def model_config(section) -> ModelConfig:
    """ModelConfig from a composed Hydra `model` section (a DictConfig or ModelSchema) or a plain mapping."""
    if dataclasses.is_dataclass(section):
        section = dataclasses.asdict(section)
    return ModelConfig(**{f.name: section[f.name] for f in dataclasses.fields(ModelConfig) if f.name in section})


@dataclass
class DecoderOutput:
    # [B, S, V] next-token logits.
    logits: torch.Tensor
    # Scalar: aux_loss_coef * sum over layers of each MoE layer's load-balancing loss (over this process's tokens).
    aux_loss: torch.Tensor


def rotary_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_seq_len, D] of the rotary embedding (half-split pairs: dimension i rotates with i + D/2)."""
    d = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # [D/2]
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64, device=device), inv_freq)  # [S, D/2]
    angles = torch.cat([angles, angles], dim=-1)  # [S, D]
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, S, D] rotated by position; cos, sin [S, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with rotary positions and grouped KV heads (n_h / n_kv query heads per KV head)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, q, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden, kv, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden, kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # [B, n_h, S, D]
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, n_kv, S, D]
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             enable_gqa=self.num_kv_heads != self.num_heads)  # [B, n_h, S, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    """Pre-norm decoder block. `moe` is the swappable MoE FFN: forward (x, target_counts=None) -> (y, aux)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.moe_norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.moe = ReferenceMoE(cfg.hidden, cfg.ffn, cfg.num_experts, cfg.top_k)

    def forward(self, x, cos, sin, target_counts=None):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        y, aux = self.moe(self.moe_norm(x), target_counts)
        return x + y, aux


class MoEDecoder(nn.Module):
    """Token embedding, L blocks, final RMSNorm, LM head (tied to the embedding or not).

    Init is deterministic from `seed`: the weights are drawn under `torch.manual_seed(seed)` inside a forked RNG, so
    the caller's RNG state is untouched and equal seeds give bit-identical models on every process. seed=None draws
    from the caller's current global RNG instead."""

    def __init__(self, cfg: ModelConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        if seed is None:
            self._build(cfg)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(cfg)
        cos, sin = rotary_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_seq_len, D]
        self.register_buffer("rope_sin", sin, persistent=False)

    def _build(self, cfg: ModelConfig) -> None:
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.hidden, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if ".moe." in f".{name}":
                continue  # ReferenceMoE initialised its own
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" not in name:
                nn.init.normal_(p, std=INIT_STD)

    def forward(self, tokens: torch.Tensor, target_counts: list[torch.Tensor] | None = None) -> DecoderOutput:
        """tokens [B, S] int64 -> DecoderOutput. target_counts[l] [E] (summing to B*S*k): replay these per-expert
        route counts in layer l (the trace-replay switch); None routes by the router."""
        b, s = tokens.shape
        if s > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {s} exceeds model.max_seq_len = {self.cfg.max_seq_len}")
        if target_counts is not None and len(target_counts) != len(self.blocks):
            raise ValueError(f"target_counts has {len(target_counts)} layers, the model {len(self.blocks)}")
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        x = self.embed(tokens)  # [B, S, H]
        aux = x.new_zeros(())
        for i, block in enumerate(self.blocks):
            x, layer_aux = block(x, cos, sin, None if target_counts is None else target_counts[i])
            aux = aux + layer_aux
        x = self.norm(x)
        logits = x @ self.embed.weight.t() if self.lm_head is None else self.lm_head(x)  # [B, S, V]
        return DecoderOutput(logits, self.cfg.aux_loss_coef * aux)


def moe_layers(model: MoEDecoder) -> list[nn.Module]:
    """Each block's MoE FFN, in layer order (ReferenceMoE before a transform, the distributed layer after)."""
    return [block.moe for block in model.blocks]


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts tokens[:, t + 1]. logits [B, S, V], tokens [B, S]."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))
