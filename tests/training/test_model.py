"""MoEDecoder against plain references (attention written out, parameter counts from the public models), and every
conf/model file against the schema."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from training.model import (
    Attention,
    DecoderOutput,
    ModelConfig,
    ModelSchema,
    MoEDecoder,
    lm_loss,
    model_config,
    moe_layers,
    rotary_tables,
)
from training.moe import ReferenceMoE

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=50, hidden=32, ffn=24, num_layers=2, num_heads=4, num_kv_heads=2, num_experts=4, top_k=2,
                max_seq_len=16)
    return ModelConfig(**{**base, **kw})


def naive_attention(attn: Attention, x: torch.Tensor, theta: float) -> torch.Tensor:
    """Written out: rotary as complex multiplication of (i, i + D/2) pairs, each query head reading KV head
    h // (n_h / n_kv), softmax over positions <= t."""
    b, s, _ = x.shape
    nh, nkv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(b, s, nh, d)
    k = attn.k_proj(x).view(b, s, nkv, d)
    v = attn.v_proj(x).view(b, s, nkv, d)
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(s, d // 2, dtype=torch.float64), torch.arange(s)[:, None] * freqs)  # [S, D/2]

    def rotate(t):
        z = torch.complex(t[..., : d // 2].double(), t[..., d // 2:].double()) * rot[None, :, None]
        return torch.cat([z.real, z.imag], -1).float()

    q, k = rotate(q), rotate(k)
    out = torch.zeros(b, s, nh, d)
    for h in range(nh):
        g = h // (nh // nkv)
        scores = torch.einsum("bte,bue->btu", q[:, :, h], k[:, :, g]) / math.sqrt(d)
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        out[:, :, h] = torch.softmax(scores, -1) @ v[:, :, g]
    return attn.o_proj(out.reshape(b, s, nh * d))


@pytest.mark.parametrize("heads,kv_heads,bias", [(4, 2, False), (4, 4, True), (2, 1, True)])
def test_attention_equals_written_out_rotary_gqa(heads, kv_heads, bias):
    cfg = tiny(num_heads=heads, num_kv_heads=kv_heads, qkv_bias=bias, rope_theta=100.0)
    torch.manual_seed(0)
    attn = Attention(cfg)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)  # biases non-zero too
    x = torch.randn(2, 12, cfg.hidden)
    cos, sin = rotary_tables(cfg)
    got = attn(x, cos[:12], sin[:12])
    torch.testing.assert_close(got, naive_attention(attn, x, cfg.rope_theta), rtol=1e-4, atol=1e-5)


def test_causal_and_deterministic_init():
    cfg = tiny()
    state = torch.get_rng_state()
    a, b = MoEDecoder(cfg, seed=3), MoEDecoder(cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), state), "seeded init moved the caller's RNG"
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(MoEDecoder(cfg, seed=4).embed.weight, a.embed.weight)
    tokens = torch.randint(0, cfg.vocab_size, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % cfg.vocab_size
    out, out2 = a(tokens), a(changed)
    assert isinstance(out, DecoderOutput) and out.logits.shape == (2, 10, cfg.vocab_size)
    torch.testing.assert_close(out.logits[:, :6], out2.logits[:, :6])  # positions < 6 never see the change
    assert not torch.allclose(out.logits[:, 6:], out2.logits[:, 6:])


def test_blocks_compose_as_written():
    """forward = embed, x += attn(norm x), x += moe(norm x) per block, final norm, LM head; aux = coef * sum."""
    for tied in (False, True):
        cfg = tiny(tie_embeddings=tied, aux_loss_coef=0.3)
        model = MoEDecoder(cfg, seed=1)
        tokens = torch.randint(0, cfg.vocab_size, (2, 9))
        cos, sin = model.rope_cos[:9], model.rope_sin[:9]
        x, aux = model.embed(tokens), 0.0
        for blk in model.blocks:
            x = x + blk.attn(blk.attn_norm(x), cos, sin)
            y, a = blk.moe(blk.moe_norm(x))
            x, aux = x + y, aux + a
        head = model.embed.weight if tied else model.lm_head.weight
        out = model(tokens)
        torch.testing.assert_close(out.logits, model.norm(x) @ head.t())
        torch.testing.assert_close(out.aux_loss, 0.3 * aux)
        assert (model.lm_head is None) == tied


def test_trace_replay_reaches_every_layer():
    cfg = tiny(num_layers=3)
    model = MoEDecoder(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 8))  # 16 tokens, 32 routes
    targets = [torch.tensor([16, 16, 0, 0]), torch.tensor([0, 8, 8, 16]), torch.tensor([4, 12, 10, 6])]
    seen = []
    for layer in moe_layers(model):
        assert isinstance(layer, ReferenceMoE)
        layer.router.register_forward_hook(lambda m, args, out: seen.append(torch.bincount(out[0].reshape(-1), minlength=4)))
    model(tokens, targets)
    assert all(torch.equal(s, t) for s, t in zip(seen, targets)) and len(seen) == 3
    with pytest.raises(ValueError, match="target_counts has 2 layers"):
        model(tokens, targets[:2])


def test_lm_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    want = -torch.stack([logits[b, t].log_softmax(-1)[tokens[b, t + 1]] for b in range(2) for t in range(4)]).mean()
    torch.testing.assert_close(lm_loss(logits, tokens), want)


def test_tiny_model_learns_a_fixed_batch():
    cfg = model_config(OmegaConf.merge(OmegaConf.structured(ModelSchema), OmegaConf.load(CONF / "tiny_mixtral.yaml")))
    cfg = dataclasses.replace(cfg, num_layers=2, vocab_size=256, max_seq_len=32)
    model = MoEDecoder(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(tokens)
        loss = lm_loss(out.logits, tokens) + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


# ---- sizes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"qkv_bias": True, "num_kv_heads": 4},
                                {"num_heads": 2, "num_kv_heads": 1, "num_experts": 3, "top_k": 1}])
def test_parameter_formula_counts_the_built_model(kw):
    cfg = tiny(**kw)
    assert cfg.num_parameters() == sum(p.numel() for p in MoEDecoder(cfg).parameters())


def test_parameter_formula_gives_the_public_mixtral_sizes():
    """Mixtral-8x7B and -8x22B at their full depth: the public checkpoints' parameter totals."""
    m7 = ModelConfig(vocab_size=32000, hidden=4096, ffn=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                     num_experts=8, top_k=2, max_seq_len=32768)
    m22 = ModelConfig(vocab_size=32768, hidden=6144, ffn=16384, num_layers=56, num_heads=48, num_kv_heads=8,
                      num_experts=8, top_k=2, max_seq_len=65536)
    assert m7.num_parameters() == 46_702_792_704
    assert m22.num_parameters() == 140_630_071_296


# The LAER-MoE paper's artifact shapes (layers, hidden, ffn, experts, top-k, QKV bias).
PAPER = {
    "mixtral_8x7b_e8k2": (32, 4096, 14336, 8, 2, False),
    "mixtral_8x7b_e16k4": (24, 4096, 7168, 16, 4, False),
    "mixtral_8x22b_e8k2": (18, 6144, 16384, 8, 2, False),
    "mixtral_8x22b_e16k4": (14, 6144, 8192, 16, 4, False),
    "qwen_8x7b_e8k2": (32, 4096, 14336, 8, 2, True),
    "qwen_8x7b_e16k4": (24, 4096, 7168, 16, 4, True),
}


def load(name: str) -> ModelConfig:
    return model_config(OmegaConf.merge(OmegaConf.structured(ModelSchema), OmegaConf.load(CONF / f"{name}.yaml")))


def test_every_model_file_builds_a_config():
    names = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert set(PAPER) | {"tiny_mixtral"} <= set(names)
    for name in names:
        raw = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        cfg = load(name)
        assert {f.name for f in dataclasses.fields(ModelConfig)} == set(raw), f"{name} does not set every field"
        assert cfg.head_dim >= 32, name


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_shapes(name):
    cfg = load(name)
    layers, hidden, ffn, experts, k, bias = PAPER[name]
    assert (cfg.num_layers, cfg.hidden, cfg.ffn, cfg.num_experts, cfg.top_k, cfg.qkv_bias) == PAPER[name]
    big = "8x22b" in name
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == ((48, 8, 32768) if big else (32, 8, 32000))
    # Analytic count (never allocated): the e16k4 variants halve each expert and double the experts, so their expert
    # parameters per layer equal e8k2's; only the layer count differs.
    expert = experts * 3 * ffn * hidden
    assert expert == 8 * 3 * (16384 if big else 14336) * hidden
    h, d = hidden, hidden // cfg.num_heads
    attn = 2 * h * cfg.num_heads * d + 2 * h * cfg.num_kv_heads * d + (bias and (cfg.num_heads + 2 * cfg.num_kv_heads) * d)
    want = 2 * cfg.vocab_size * h + layers * (attn + expert + experts * h + 2 * h) + h
    assert cfg.num_parameters() == want


def test_tiny_file_builds_a_model():
    cfg = load("tiny_mixtral")
    model = MoEDecoder(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters()
    out = model(torch.randint(0, cfg.vocab_size, (1, 16)))
    assert out.logits.shape == (1, 16, cfg.vocab_size) and torch.isfinite(out.logits).all()


def test_schema_rejects_bad_values():
    schema = OmegaConf.structured(ModelSchema)
    with pytest.raises(Exception, match="hidden"):
        OmegaConf.merge(schema, {"hidden": "wide"})
    with pytest.raises(ValueError, match="num_kv_heads"):
        dataclasses.replace(load("tiny_mixtral"), num_kv_heads=3)
    with pytest.raises(ValueError, match="even head"):
        dataclasses.replace(load("tiny_mixtral"), num_heads=128)
    with pytest.raises(ValueError, match="max_seq_len"):
        MoEDecoder(tiny())(torch.zeros(1, 17, dtype=torch.long))


def test_model_group_composes_under_hydra(tmp_path):
    """conf/model as a Hydra group under a schema holding ModelSchema: select a file, override a key, reject a typo."""
    import shutil
    from dataclasses import field

    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    @dataclasses.dataclass
    class Probe:
        model: ModelSchema = field(default_factory=ModelSchema)

    ConfigStore.instance().store(name="model_probe_schema", node=Probe)
    shutil.copytree(CONF, tmp_path / "model")
    (tmp_path / "probe.yaml").write_text("defaults:\n  - model_probe_schema\n  - model: tiny_mixtral\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert model_config(compose("probe", overrides=["model.num_layers=2"]).model) == \
            dataclasses.replace(load("tiny_mixtral"), num_layers=2)
        assert model_config(compose("probe", overrides=["model=qwen_8x7b_e8k2"]).model) == load("qwen_8x7b_e8k2")
        with pytest.raises(Exception, match="model.bogus"):
            compose("probe", overrides=["model.bogus=1"])
