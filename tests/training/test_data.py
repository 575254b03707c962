"""Training data: corpus and cached tokenizer, rank-independent global batches, trace replay counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.traces import ExpertLoadTrace
from training.data import TokenBatches, TraceReplay, corpus_files, load_corpus
from training.train_config import DataConfig


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(6):
        (src / "pkg" / f"m{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n"
                                                      for j in range(40)))
    (src / "notes.bin").write_bytes(b"\x00" * 10)  # not text: ignored
    return DataConfig(corpus_dir=str(src), max_files=None, vocab_size=300, cache_dir=str(tmp_path / "cache"))


def test_tokenizer_is_trained_once_then_cached(corpus):
    tok, ids = load_corpus(corpus)
    assert len(corpus_files(corpus)) == 6
    assert tok.get_vocab_size() <= 300 and int(ids.max()) < tok.get_vocab_size()
    # Byte-level BPE round-trips the text (the end-of-text token separates files).
    assert "def f0_3(x):" in tok.decode(ids[:200].tolist())
    assert len(list(Path(corpus.cache_dir).rglob("tokens.npy"))) == 1
    tok2, ids2 = load_corpus(corpus)
    assert torch.equal(ids, ids2) and tok2.get_vocab() == tok.get_vocab()


def test_default_corpus_is_the_standard_library():
    files = corpus_files(DataConfig(max_files=50))
    assert len(files) == 50 and all(f.suffix in (".py", ".txt") for f in files)
    assert any(f.name == "os.py" for f in corpus_files(DataConfig(max_files=None)))


def test_global_batch_is_independent_of_the_rank_count():
    tokens = torch.arange(10_000)
    one = TokenBatches(tokens, 16, 8, 0, 1, seed=3)
    for world in (2, 4, 8):
        parts = [TokenBatches(tokens, 16, 8, r, world, seed=3) for r in range(world)]
        for g in (0, 1, 77, 500):  # 500 is past the first epoch (78 batches of 8 in 625 sequences)
            assert torch.equal(torch.cat([p(g) for p in parts]), one(g))
    # Every sequence once per epoch, a new order the next epoch, and the same order on a new instance.
    epoch = torch.cat([one(g) for g in range(78)])
    assert len(torch.unique(epoch[:, 0])) == 78 * 8
    assert not torch.equal(one(0), one(78))
    assert torch.equal(TokenBatches(tokens, 16, 8, 0, 1, seed=3)(5), one(5))


def test_bad_data_is_named(tmp_path, corpus):
    with pytest.raises(ValueError, match="data.global_batch = 6 is not divisible by the 4 ranks"):
        TokenBatches(torch.arange(1000), 16, 6, 0, 4)
    with pytest.raises(ValueError, match="fewer than data.global_batch"):
        TokenBatches(torch.arange(100), 16, 8, 0, 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no python here")
    with pytest.raises(FileNotFoundError, match="holds no"):
        corpus_files(DataConfig(corpus_dir=str(tmp_path / "empty")))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.py").write_text("   \n")
    with pytest.raises(FileNotFoundError, match="hold no text"):
        load_corpus(DataConfig(corpus_dir=str(tmp_path / "blank"), cache_dir=str(tmp_path / "c")))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        corpus_files(DataConfig(corpus_dir=str(tmp_path / "missing")))


def test_trace_replay_follows_the_trace():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(3, 4, 2, 2, 8))  # [I, R, L, M, E]
    counts[..., 0] = 400  # a hot expert pair (0, 1) after merging 8 -> 4 experts
    trace = ExpertLoadTrace(counts, np.arange(3))
    replay = TraceReplay(trace, num_layers=3, num_experts=4, top_k=2, world_size=2, positions=100)
    assert replay.counts.shape == (6, 3, 2, 4)  # the trace has 6 positions: the table stops there and wraps
    tokens = 96
    for g in (0, 5, 13):  # 13 wraps (3 iterations x 2 micro-batches)
        out = replay(g, 1, tokens)
        assert len(out) == 3
        for layer, c in enumerate(out):
            assert int(c.sum()) == tokens * 2 and int(c.max()) <= tokens
            src = trace.merge_ranks(2).microbatch(layer % 2, g % 6)[1].reshape(4, 2).sum(1)
            assert int(np.argmax(c.numpy())) == int(np.argmax(src)) == 0
    with pytest.raises(ValueError, match="not divisible by the 3 ranks"):
        TraceReplay(trace, 1, 4, 2, 3, 10)
    with pytest.raises(ValueError, match="not a multiple of model.num_experts = 3"):
        TraceReplay(trace, 1, 3, 2, 2, 10)
