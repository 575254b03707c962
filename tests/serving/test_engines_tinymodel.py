"""The tiny local model: built offline, Llama-shaped with head dim >= 32, a byte-level BPE tokenizer that round-trips
any text, a chat template, and cached (the second build is the same directory, untouched)."""

import json

import pytest

from serving.tinymodel import TinyModelSpec, build_tiny_model


def test_builds_offline_and_caches(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = TinyModelSpec(layers=1)
    path = build_tiny_model(spec, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 32 and cfg["vocab_size"] == spec.vocab
    tok = AutoTokenizer.from_pretrained(path)
    text = "Kalo mi netaru, ünïcode ✓ 123"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text  # byte-level: nothing is lost
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|user|>hi\n<|assistant|>"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(spec, tmp_path) == path and (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_head_dim_below_32_is_refused():
    with pytest.raises(ValueError, match="head dim"):
        TinyModelSpec(hidden=64, heads=4)
