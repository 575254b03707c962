"""Whole-model transforms on gloo: a transformed model on N ranks against the same model in one process.

Every rank builds the same model from the same seed and the same [N, B, S] token batch. The reference runs every
rank's chunk through the untransformed model and back-propagates the sum of their losses; on the ranks, each runs
its own chunk, dense and router gradients are summed over ranks (what data parallel does), and expert gradients are
all-gathered from the distributed storage. Each case returns None or raises; `all_cases` runs them in one group.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from tests.training.distributed import run_each
from tests.training.fsep_cases import random_placement, rel
from training.fsep import FSEPGroups, apply_deepspeed_moe, apply_ep, apply_fsdp_ep, apply_fsep, distributed_layers
from training.model import ModelConfig, MoEDecoder, lm_loss, moe_layers

B, S = 2, 8  # sequences and positions per rank
TOL = 1e-5  # relative (norm) error allowed, float32


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=64, hidden=32, ffn=24, num_layers=2, num_heads=2, num_kv_heads=1, num_experts=4, top_k=2,
                max_seq_len=S, aux_loss_coef=0.1)
    return ModelConfig(**{**base, **kw})


def batch(cfg, n, seed=0):
    return torch.randint(0, cfg.vocab_size, (n, B, S), generator=torch.Generator().manual_seed(seed))


def replay_targets(n, layers, e, k, seed=0):
    """[N][L] per-expert counts of B*S tokens, skewed (one expert takes every token, some take none)."""
    rng = np.random.default_rng(seed)
    t = B * S
    out = []
    for _ in range(n):
        per_layer = []
        for _ in range(layers):
            c = np.zeros(e, dtype=np.int64)
            hot, *rest = rng.permutation(e)[: max(k, e // 2) + 1]
            c[hot] = t
            left = t * (k - 1)
            for j in rest[:-1]:
                c[j] = min(t, int(rng.integers(0, left + 1)))
                left -= c[j]
            c[rest[-1]] = left
            assert c.max() <= t and c.sum() == t * k
            per_layer.append(torch.tensor(c))
        out.append(per_layer)
    return out


def decoder_reference(cfg, tokens, targets=None, seed=0):
    """Single process: logits and loss per rank chunk, gradients of the summed loss (by parameter name)."""
    model = MoEDecoder(cfg, seed=seed)
    logits, losses, total = [], [], 0.0
    for r in range(tokens.shape[0]):
        out = model(tokens[r], None if targets is None else targets[r])
        loss = lm_loss(out.logits, tokens[r]) + out.aux_loss
        logits.append(out.logits.detach())
        losses.append(loss.detach())
        total = total + loss
    total.backward()
    return model, logits, losses


def summed_grad(p):
    g = p.grad.clone()
    dist.all_reduce(g)
    return g


def check_dense(ref_model, model):
    """Every parameter outside the MoE blocks (same name, same shape in both) has the reference's gradient once
    summed over ranks. Returns how many were compared."""
    mine = dict(model.named_parameters())
    count = 0
    for name, p in ref_model.named_parameters():
        if name in mine and mine[name].shape == p.shape and ".moe." not in name and ".mlp." not in name:
            assert rel(summed_grad(mine[name]), p.grad) < TOL, f"{name} grad rel err {rel(summed_grad(mine[name]), p.grad)}"
            count += 1
    return count


def check_decoder(model, ref_model, ref_logits, ref_losses, tokens, rank, targets=None):
    out = model(tokens[rank], None if targets is None else targets[rank])
    loss = lm_loss(out.logits, tokens[rank]) + out.aux_loss
    loss.backward()
    assert rel(out.logits.detach(), ref_logits[rank]) < TOL, f"logits rel err {rel(out.logits.detach(), ref_logits[rank])}"
    assert abs(loss.item() - float(ref_losses[rank])) <= TOL * abs(float(ref_losses[rank])), (loss.item(), ref_losses)
    dense = check_dense(ref_model, model)
    moe_free = [n for n, _ in ref_model.named_parameters() if ".moe." not in n]
    assert dense == len(moe_free), (dense, len(moe_free))
    return out


def check_moe_layers(model, ref_model):
    """Router gradient (summed over ranks) and the re-assembled expert gradients of every layer."""
    layers = distributed_layers(model)
    assert layers == moe_layers(model) and len(layers) == ref_model.cfg.num_layers
    for i, (layer, ref) in enumerate(zip(layers, moe_layers(ref_model))):
        assert rel(summed_grad(layer.router.weight), ref.router.weight.grad) < TOL, f"layer {i} router"
        assert ref.router.weight.grad.norm() > 0
        for name, a, b in zip(("w1", "w3", "w2"), layer.gather_expert_weights(grad=True),
                              (ref.w1.grad, ref.w3.grad, ref.w2.grad)):
            assert rel(a, b) < TOL, f"layer {i} {name} grad rel err {rel(a, b)}"


# ---------------------------------------------------------------------------------------------------------------
def case_decoder_fsep(rank, n):
    groups = FSEPGroups(dist.group.WORLD, 1)
    cfg = tiny_config()
    tokens = batch(cfg, n)
    placement = random_placement(np.random.default_rng(1), n, cfg.num_experts, 3)
    assert placement.replica_counts().max() > 1
    for targets in (None, replay_targets(n, cfg.num_layers, cfg.num_experts, cfg.top_k)):
        ref_model, ref_logits, ref_losses = decoder_reference(cfg, tokens, targets)
        model = apply_fsep(MoEDecoder(cfg, seed=0), groups, 3, placement)
        assert isinstance(model, MoEDecoder)
        check_decoder(model, ref_model, ref_logits, ref_losses, tokens, rank, targets)
        check_moe_layers(model, ref_model)


def case_decoder_fsep_tied_bias_and_relayout(rank, n):
    """Tied embeddings, QKV bias, top-1; layers re-laid out independently after the transform."""
    groups = FSEPGroups(dist.group.WORLD, 1)
    cfg = tiny_config(tie_embeddings=True, qkv_bias=True, top_k=1, num_experts=3, num_layers=3)
    tokens = batch(cfg, n, seed=1)
    ref_model, ref_logits, ref_losses = decoder_reference(cfg, tokens, seed=5)
    model = apply_fsep(MoEDecoder(cfg, seed=5), groups, 2)
    rng = np.random.default_rng(2)
    for layer in distributed_layers(model):
        layer.set_placement(random_placement(rng, n, cfg.num_experts, 2))
    check_decoder(model, ref_model, ref_logits, ref_losses, tokens, rank)
    check_moe_layers(model, ref_model)


def case_decoder_ep_and_fsdp_ep(rank, n):
    groups = FSEPGroups(dist.group.WORLD, 1)
    cfg = tiny_config()
    tokens = batch(cfg, n, seed=2)
    targets = replay_targets(n, cfg.num_layers, cfg.num_experts, cfg.top_k, seed=3)
    for transform in (lambda m: apply_ep(m, groups), lambda m: apply_fsdp_ep(m, groups, 2)):
        for tg in (None, targets):
            ref_model, ref_logits, ref_losses = decoder_reference(cfg, tokens, tg)
            model = transform(MoEDecoder(cfg, seed=0))
            check_decoder(model, ref_model, ref_logits, ref_losses, tokens, rank, tg)
            check_moe_layers(model, ref_model)


def case_decoder_deepspeed_moe(rank, n):
    """DeepSpeed-MoE dropless: same logits, LM loss and gradients (DeepSpeed's top-2 aux loss is its own, so the
    aux term is off here)."""
    cfg = tiny_config(aux_loss_coef=0.0)
    tokens = batch(cfg, n, seed=4)
    targets = replay_targets(n, cfg.num_layers, cfg.num_experts, cfg.top_k, seed=5)
    for tg in (None, targets):
        ref_model, ref_logits, ref_losses = decoder_reference(cfg, tokens, tg)
        model = apply_deepspeed_moe(MoEDecoder(cfg, seed=0), n)
        check_decoder(model, ref_model, ref_logits, ref_losses, tokens, rank, tg)
        for i, (layer, ref) in enumerate(zip(moe_layers(model), moe_layers(ref_model))):
            ds = layer.moe.deepspeed_moe
            assert rel(summed_grad(ds.gate.wg.weight), ref.router.weight.grad) < TOL, f"layer {i} router"
            for local, j in enumerate(layer.local_expert_ids()):
                ex = ds.experts.deepspeed_experts[local]
                for a, b in ((ex.w1, ref.w1), (ex.w3, ref.w3), (ex.w2, ref.w2)):
                    assert rel(a.grad, b.grad[j]) < TOL, f"layer {i} expert {j}"
    try:
        apply_deepspeed_moe(MoEDecoder(cfg, seed=0), n + 1)
        raise AssertionError("ep_size != world size accepted")
    except ValueError as err:
        assert "ep_size" in str(err)


def case_layer_still_accepted(rank, n):
    """A ReferenceMoE alone still gives back the layer itself (the per-layer form of the transform)."""
    from training.fsep import FSEPMoE
    from training.moe import ReferenceMoE

    torch.manual_seed(0)
    layer = apply_fsep(ReferenceMoE(8, 12, 4, 2), FSEPGroups(dist.group.WORLD, 1), 2)
    assert isinstance(layer, FSEPMoE)


# ---- Hugging Face ---------------------------------------------------------------------------------------------
def hf_model(seed=0, **kw):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=S, output_router_logits=True, router_aux_loss_coef=0.05, **kw)
    torch.manual_seed(seed)
    return MixtralForCausalLM(cfg).float()


def hf_reference(tokens, seed=0):
    model = hf_model(seed)
    logits, losses, auxes, total = [], [], [], 0.0
    for r in range(tokens.shape[0]):
        out = model(input_ids=tokens[r], labels=tokens[r])
        logits.append(out.logits.detach())
        losses.append(out.loss.detach())
        auxes.append(out.aux_loss.detach())
        total = total + out.loss
    total.backward()
    return model, logits, losses, auxes


def hf_expert_grads(blk, e):
    """(gate_up_proj, down_proj)-shaped full expert gradients of an HFMoEBlock's layer, on every rank."""
    if hasattr(blk.moe, "gather_expert_weights"):
        w1, w3, w2 = blk.moe.gather_expert_weights(grad=True)
        return torch.cat([w1, w3], 1), w2
    # DeepSpeed-MoE: each rank holds whole experts; sum the ranks' zero-padded pieces.
    ds = blk.moe.moe.deepspeed_moe
    f, h = ds.experts.deepspeed_experts[0].w1.shape
    gate_up, down = torch.zeros(e, 2 * f, h), torch.zeros(e, h, f)
    for local, j in enumerate(blk.moe.local_expert_ids()):
        ex = ds.experts.deepspeed_experts[local]
        gate_up[j], down[j] = torch.cat([ex.w1.grad, ex.w3.grad]), ex.w2.grad
    dist.all_reduce(gate_up)
    dist.all_reduce(down)
    return gate_up, down


def case_hf_mixtral(rank, n):
    """MixtralForCausalLM after apply_fsep (random layout with replicas), apply_ep and apply_deepspeed_moe: logits,
    LM loss, load-balancing loss (from the recorded router logits) and every gradient as before it in one process.
    The FSEP model runs once before its transform, so transformers' recording hooks are already in place."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from training.hf import HFMoEBlock

    groups = FSEPGroups(dist.group.WORLD, 1)
    tokens = batch(tiny_config(), n, seed=6)
    ref_model, ref_logits, ref_losses, ref_aux = hf_reference(tokens)
    ref_blocks = [m for m in ref_model.modules() if isinstance(m, MixtralSparseMoeBlock)]
    transforms = {
        "fsep": lambda m: apply_fsep(m, groups, 3, random_placement(np.random.default_rng(3), n, 4, 3)),
        "ep": lambda m: apply_ep(m, groups),
        "deepspeed": lambda m: apply_deepspeed_moe(m, n),
    }
    for name, transform in transforms.items():
        model = hf_model()
        if name == "fsep":
            model(input_ids=tokens[rank])  # installs the router-logit hooks before the conversion
        model = transform(model)
        blocks = [m for m in model.modules() if isinstance(m, HFMoEBlock)]
        assert len(blocks) == 2 and not any(isinstance(m, MixtralSparseMoeBlock) for m in model.modules())
        out = model(input_ids=tokens[rank], labels=tokens[rank])
        out.loss.backward()
        err = rel(out.logits.detach(), ref_logits[rank])
        assert err < TOL, f"{name}: logits rel err {err}"
        assert abs(out.loss.item() - float(ref_losses[rank])) <= TOL * float(ref_losses[rank]), name
        assert abs(out.aux_loss.item() - float(ref_aux[rank])) <= TOL * float(ref_aux[rank]), f"{name}: aux loss"
        dense = check_dense(ref_model, model)
        assert dense == len([n_ for n_, _ in ref_model.named_parameters() if ".mlp." not in n_])
        for i, (blk, ref) in enumerate(zip(blocks, ref_blocks)):
            assert rel(summed_grad(blk.router_weight()), ref.gate.weight.grad) < TOL, f"{name}: layer {i} router"
            gate_up, down = hf_expert_grads(blk, ref.experts.num_experts)
            assert rel(gate_up, ref.experts.gate_up_proj.grad) < TOL, f"{name}: layer {i} gate_up_proj"
            assert rel(down, ref.experts.down_proj.grad) < TOL, f"{name}: layer {i} down_proj"


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def all_cases(rank, n):
    return run_each(CASES, rank, n)
