"""A 2-layer FSEP forward+backward step on CUDA (world size 1, NCCL): peak memory and step time per mode, as JSON.

    python experiments/device/fsep_cuda_step.py [OUT_DIR]      # OUT_DIR defaults to $OUT, else the current folder

Not a test dependency and not a benchmark of scale: one GPU, one rank, so every all-to-all is a copy to itself. What
it checks is that the runtime's phases run on a CUDA device with NCCL (restore and gradient scatter on their own
group, bf16 compute over fp32 shards), and it reports torch.cuda.max_memory_allocated of free vs keep restored experts
and the step time with the communication schedule on and off (median of CUDA-synchronised steps).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def step(model, tokens):
    """One forward+backward under bf16 autocast; the loss."""
    import torch

    from training.model import lm_loss

    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(tokens)
        loss = lm_loss(out.logits, tokens) + out.aux_loss
    loss.backward()
    return loss


def main(out_dir: Path) -> dict:
    import torch
    import torch.distributed as dist

    from training.fsep import FSEPGroups, apply_fsep, distributed_layers
    from training.model import ModelConfig, MoEDecoder

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    dist.init_process_group("nccl", rank=0, world_size=1)
    dev = torch.device("cuda:0")
    torch.cuda.set_device(dev)
    cfg = ModelConfig(vocab_size=1024, hidden=512, ffn=1792, num_layers=2, num_heads=8, num_kv_heads=2,
                      num_experts=8, top_k=2, max_seq_len=512, aux_loss_coef=0.01)
    tokens = torch.randint(0, cfg.vocab_size, (8, 512), device=dev)
    groups = FSEPGroups.create(dist.group.WORLD, devices_per_node=1)
    results = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "config": cfg.__dict__,
               "tokens": list(tokens.shape), "modes": []}
    for keep in (False, True):
        for comm_opt in (True, False):
            model = apply_fsep(MoEDecoder(cfg, seed=0).to(dev), groups, cfg.num_experts, comm_opt=comm_opt,
                               keep_restored=keep, compute_dtype=torch.bfloat16)
            for _ in range(2):
                step(model, tokens)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            times = []
            for _ in range(5):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                loss = step(model, tokens)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            shard = distributed_layers(model)[0].expert_shard
            results["modes"].append({
                "keep_restored": keep, "comm_opt": comm_opt, "step_ms_median": 1e3 * statistics.median(times),
                "max_memory_allocated_mib": torch.cuda.max_memory_allocated(dev) / 2 ** 20,
                "allocated_before_step_mib": base / 2 ** 20, "loss": float(loss),
                "shard_dtype": str(shard.dtype), "shard_grad_dtype": str(shard.grad.dtype)})
            del model
            torch.cuda.empty_cache()
    dist.destroy_process_group()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fsep_cuda_step.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "."))
    print(json.dumps(main(out), indent=2))
