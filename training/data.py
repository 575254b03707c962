"""Training data: a real text corpus available offline (by default the running Python's own standard library source),
a byte-level BPE tokenizer trained on it locally with `tokenizers` (cached), and deterministic sharding over ranks;
plus the trace-replay switch that forces each MoE layer to a real trace's per-expert counts.

Notation: N ranks, G sequences per global micro-batch (all ranks together), B = G / N per rank, S tokens per sequence,
L MoE layers, E experts, k routes per token.

Order of the data. The token stream (files in sorted order, each ended by an end-of-text token) is cut into
sequences of S tokens; epoch e visits them in a permutation drawn from (seed, e). Global micro-batch g is the G
sequences at positions g*G .. (g+1)*G - 1 of that order, and rank r of N takes its r-th slice of B. A position in
the data is therefore one integer g, and the global batch does not depend on N, so a run resumed on another rank
count sees the same data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

from training.train_config import DataConfig

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"


def corpus_files(cfg: DataConfig) -> list[Path]:
    """The corpus's files, sorted, at most max_files of them; a FileNotFoundError naming the folder if it has none."""
    root = Path(cfg.corpus_dir) if cfg.corpus_dir is not None else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"data.corpus_dir: {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".txt") and p.is_file()
                   and "site-packages" not in p.parts)
    if not files:
        raise FileNotFoundError(f"data.corpus_dir: {root} holds no *.py or *.txt files")
    if cfg.max_files is not None and len(files) > cfg.max_files:
        files = [files[i] for i in np.linspace(0, len(files) - 1, cfg.max_files).round().astype(int)]
    return files


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _cache_key(cfg: DataConfig, files: list[Path]) -> str:
    h = hashlib.sha256(f"{cfg.vocab_size}\n".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_corpus(cfg: DataConfig):
    """(tokenizer, tokens [T] int64): the BPE trained on the corpus and the whole corpus encoded, from the cache when
    the same files and vocabulary were seen before."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    files = corpus_files(cfg)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(__file__).resolve().parent.parent / "data" / "cache"
    folder = cache / "corpus" / _cache_key(cfg, files)
    tok_path, ids_path = folder / "tokenizer.json", folder / "tokens.npy"
    if tok_path.is_file() and ids_path.is_file():
        return Tokenizer.from_file(str(tok_path)), torch.from_numpy(np.load(ids_path).astype(np.int64))
    texts = [_read(p) for p in files]
    if not any(t.strip() for t in texts):
        raise FileNotFoundError(f"data.corpus_dir: the {len(files)} files under {files[0].parent} hold no text")
    log.info("training a byte-level BPE (vocab %d) on %d files", cfg.vocab_size, len(files))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=cfg.vocab_size, min_frequency=2, special_tokens=[EOT],
                            show_progress=False)
    eot = bpe.token_to_id(EOT)
    ids = []
    for enc in bpe.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.int32)
    folder.mkdir(parents=True, exist_ok=True)
    # Write then rename, under this process's own names: a crash leaves no half file, and ranks started together by
    # torchrun may each build the cache at once (the renames are atomic; the last one wins, all equal).
    tmp_ids, tmp_tok = folder / f"tokens.{os.getpid()}.tmp.npy", folder / f"tokenizer.{os.getpid()}.tmp.json"
    np.save(tmp_ids, arr)
    bpe.save(str(tmp_tok))
    (folder / "files.json").write_text(json.dumps([str(p) for p in files]))
    tmp_ids.rename(ids_path)
    tmp_tok.rename(tok_path)
    return Tokenizer.from_file(str(tok_path)), torch.from_numpy(arr.astype(np.int64))


class TokenBatches:
    """Global micro-batch g -> this rank's [B, S] tokens (module doc: order and sharding)."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, global_batch: int, rank: int, world_size: int,
                 seed: int = 0):
        if global_batch % world_size:
            raise ValueError(f"data.global_batch = {global_batch} is not divisible by the {world_size} ranks")
        self.num_sequences = len(tokens) // seq_len
        if self.num_sequences < global_batch:
            raise ValueError(f"the corpus has {len(tokens)} tokens: fewer than data.global_batch = {global_batch} "
                             f"sequences of data.seq_len = {seq_len}")
        self.sequences = tokens[: self.num_sequences * seq_len].view(self.num_sequences, seq_len)
        self.global_batch, self.rank, self.world_size, self.seed = global_batch, rank, world_size, seed
        self.batch_per_rank = global_batch // world_size
        self._perm: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences))
        return self._perm[1]

    def global_rows(self, g: int) -> np.ndarray:
        """[G] sequence ids of global micro-batch g (epochs drop the last partial batch)."""
        per_epoch = self.num_sequences // self.global_batch
        epoch, pos = divmod(g, per_epoch)
        return self._order(epoch)[pos * self.global_batch:(pos + 1) * self.global_batch]

    def __call__(self, g: int) -> torch.Tensor:
        rows = self.global_rows(g)[self.rank * self.batch_per_rank:(self.rank + 1) * self.batch_per_rank]
        return self.sequences[torch.from_numpy(rows)]


class TraceReplay:
    """Per-layer target counts from an expert-load trace (the trace-replay switch): global micro-batch g in layer l
    replays trace position g mod `positions` (iteration-major micro-batches) of trace layer l mod L_trace, the trace's
    source ranks merged into N, its experts merged into E consecutive groups; each rank's row is scaled to that
    rank's B*S*k routes with at most B*S per expert (a token takes an expert once).

    Built once (in the launching process): it keeps only the [positions, L, N, E] counts the run replays, small
    enough to send to every rank, where the trace itself is hundreds of MB."""

    def __init__(self, trace, num_layers: int, num_experts: int, top_k: int, world_size: int, positions: int):
        if trace.num_ranks % world_size:
            raise ValueError(f"trace has {trace.num_ranks} source ranks, not divisible by the {world_size} ranks")
        if trace.num_experts % num_experts:
            raise ValueError(f"trace has {trace.num_experts} experts, not a multiple of model.num_experts = "
                             f"{num_experts}")
        merged = trace.merge_ranks(world_size)
        positions = min(positions, trace.num_iterations * trace.num_microbatches)
        table = np.stack([np.stack([merged.microbatch(layer % trace.num_layers, t) for layer in range(num_layers)])
                          for t in range(positions)])  # [P, L, N, E_trace]
        self.counts = table.reshape(table.shape[:3] + (num_experts, -1)).sum(-1)  # [P, L, N, E]
        self.top_k = top_k

    def __call__(self, g: int, rank: int, tokens_per_rank: int) -> list[torch.Tensor]:
        from training.moe.gating import scale_counts

        out = []
        for row in self.counts[g % len(self.counts), :, rank]:  # [E] per layer
            if row.sum() == 0:
                row = np.ones_like(row)
            out.append(torch.from_numpy(scale_counts(row, tokens_per_rank * self.top_k, tokens_per_rank)))
        return out
