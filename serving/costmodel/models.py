"""Transformer shapes of the served models, enough for a roofline cost model and KV-cache sizing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden: int
    ffn: int  # intermediate size of the MLP
    num_heads: int
    num_kv_heads: int  # < num_heads for grouped-query attention
    vocab: int
    gated_mlp: bool  # SwiGLU (3 matrices) vs. a plain 2-matrix MLP (OPT, BLOOM)
    bytes_per_param: int = 2  # fp16 / bf16 weights and KV cache
    context_len: int = 4096  # longest sequence the model was trained for (max_model_len should not exceed it)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @property
    def params_per_layer(self) -> float:
        kv_dim = self.num_kv_heads * self.head_dim
        attn = self.hidden * (self.hidden + 2 * kv_dim) + self.hidden * self.hidden  # QKV + output projection
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.ffn
        return float(attn + mlp)

    @property
    def num_params(self) -> float:
        # Input embedding and LM head are counted separately (LLaMA unties them; OPT ties them, a small error).
        return self.num_layers * self.params_per_layer + 2 * self.vocab * self.hidden

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_param


# Shapes from the models' published configs.
MODELS = {
    "llama2-70b": ModelSpec("llama2-70b", 80, 8192, 28672, 64, 8, 32000, gated_mlp=True),
    # Llama-3-70B's shape (grouped-query attention, 128k vocabulary) at its 8k context: roofline only, the measured
    # table has no rows for it.
    "llama3-70b": ModelSpec("llama3-70b", 80, 8192, 28672, 64, 8, 128256, gated_mlp=True, context_len=8192),
    "llama-30b": ModelSpec("llama-30b", 60, 6656, 17920, 52, 52, 32000, gated_mlp=True),
    "opt-30b": ModelSpec("opt-30b", 48, 7168, 28672, 56, 56, 50272, gated_mlp=False),
    "opt-66b": ModelSpec("opt-66b", 64, 9216, 36864, 72, 72, 50272, gated_mlp=False),
    "bloom-176b": ModelSpec("bloom-176b", 70, 14336, 57344, 112, 112, 250880, gated_mlp=False),
    # For the real-engine tests later: head dim 32 (the vLLM CPU backend needs >= 32).
    "tiny-llama": ModelSpec("tiny-llama", 2, 64, 128, 2, 2, 512, gated_mlp=True, context_len=512),
}


def get_model(name: str) -> ModelSpec:
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[key]
