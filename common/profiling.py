"""Measure this machine for the cost models: matmul throughput by size, memory bandwidth, all-to-all bandwidth
across local processes, SwiGLU-expert and attention cost per token. Writes one JSON profile that
`common.topology.local_cpu` and `common.costmodel.ComputeModel.from_profile` load.

    python -m common.profiling                                                # this CPU -> ./profile_cpu.json
    python -m common.profiling --out common/profiles/local_cpu.json            # replace the committed CPU profile
    python -m common.profiling --device cuda --out profile_h200.json          # same script on a GPU (NCCL if >= 2 GPUs)

torch is imported here only: this is where the common layer measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ProfileSizes:
    matmul: tuple[int, ...] = (128, 256, 512, 1024, 2048)  # square m = n = k
    memory_mb: int = 256  # buffer copied to measure memory bandwidth
    alltoall_kb: tuple[int, ...] = (4, 64, 1024, 8192)  # bytes per peer
    alltoall_world: int = 2
    expert: tuple[tuple[int, int, int], ...] = ((256, 512, 2048), (512, 1024, 4096))  # (hidden, ffn, tokens)
    attention: tuple[tuple[int, int, int], ...] = ((8, 64, 512), (8, 64, 2048))  # (heads, head_dim, seq)
    repeats: int = 5


QUICK = ProfileSizes(matmul=(64, 128, 256), memory_mb=8, alltoall_kb=(4, 64), expert=((64, 128, 256),),
                     attention=((2, 32, 128),), repeats=2)


def _timeit(fn, sync, repeats: int) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync_for(device):
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def profile_matmul(device, dtype, sizes, repeats) -> list[dict]:
    import torch

    sync, rows = _sync_for(device), []
    for s in sizes:
        a = torch.randn(s, s, device=device, dtype=dtype)
        b = torch.randn(s, s, device=device, dtype=dtype)
        sec = _timeit(lambda a=a, b=b: a @ b, sync, repeats)
        flops = 2.0 * s**3
        rows.append({"m": s, "n": s, "k": s, "dtype": str(dtype), "seconds": sec, "flops": flops, "flops_per_s": flops / sec})
    return rows


def profile_memory(device, megabytes, repeats) -> dict:
    import torch

    n = megabytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    sec = _timeit(lambda: dst.copy_(src), _sync_for(device), repeats)
    moved = 2.0 * n * 4  # read + write
    return {"bytes": moved, "seconds": sec, "bandwidth": moved / sec}


def profile_expert(device, dtype, shapes, repeats) -> list[dict]:
    """Forward + backward of one SwiGLU expert (w1, w3: [F, H], w2: [H, F]) per token."""
    import torch

    sync, rows = _sync_for(device), []
    for h, f, t in shapes:
        w1 = torch.randn(f, h, device=device, dtype=dtype, requires_grad=True)
        w3 = torch.randn(f, h, device=device, dtype=dtype, requires_grad=True)
        w2 = torch.randn(h, f, device=device, dtype=dtype, requires_grad=True)
        x = torch.randn(t, h, device=device, dtype=dtype, requires_grad=True)

        def step(w1=w1, w2=w2, w3=w3, x=x):
            y = (torch.nn.functional.silu(x @ w1.t()) * (x @ w3.t())) @ w2.t()
            y.sum().backward()

        sec = _timeit(step, sync, repeats)
        rows.append({"hidden": h, "ffn": f, "tokens": t, "fwd_bwd_s": sec, "s_per_token": sec / t,
                     "flops_per_s": 18.0 * t * h * f / sec})
    return rows


def profile_attention(device, dtype, shapes, repeats) -> list[dict]:
    """Causal scaled-dot-product attention forward per token, one sequence."""
    import torch

    sync, rows = _sync_for(device), []
    for heads, dim, seq in shapes:
        q, k, v = (torch.randn(1, heads, seq, dim, device=device, dtype=dtype) for _ in range(3))
        sec = _timeit(lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                      sync, repeats)
        rows.append({"heads": heads, "head_dim": dim, "seq": seq, "fwd_s": sec, "s_per_token": sec / seq})
    return rows


def _alltoall_worker(rank, world, sizes_kb, repeats) -> list[dict]:
    """One rank of the all-to-all profile (run by common.launch.run_local, which has joined the group)."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    sync = _sync_for(device)
    rows = []
    for kb in sizes_kb:
        n = kb * 1024 // 4
        send = torch.ones(n * world, device=device)
        recv = torch.empty_like(send)

        def op(send=send, recv=recv):
            dist.all_to_all_single(recv, send)

        for _ in range(2):
            op()
        sync()
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            op()
            sync()
            times.append(time.perf_counter() - t0)
        # The slowest rank decides a collective's time.
        t = torch.tensor([statistics.median(times)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        rows.append({"world": world, "bytes_per_peer": kb * 1024, "seconds": float(t)})
    return rows


def profile_alltoall(device_type: str, world: int, sizes_kb, repeats) -> list[dict]:
    """all_to_all_single across `world` local processes: gloo on CPU, NCCL across GPUs. [] if it cannot run."""
    import torch

    from common.launch import run_local

    if device_type == "cuda":
        if torch.cuda.device_count() < world:
            return []
        backend = "nccl"
    else:
        backend = "gloo"
    return run_local(_alltoall_worker, world, backend, args=(list(sizes_kb), repeats), num_threads=None)[0]


def fit_alpha_beta(rows: list[dict]) -> tuple[float, float]:
    """Least-squares fit of seconds = latency + (world - 1) * bytes_per_peer / bandwidth; returns (bandwidth, latency)."""
    x = np.array([(r["world"] - 1) * r["bytes_per_peer"] for r in rows], dtype=float)
    y = np.array([r["seconds"] for r in rows], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    slope = max(slope, 1e-15)
    return 1.0 / slope, max(intercept, 0.0)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_profile(device_type: str = "cpu", sizes: ProfileSizes = ProfileSizes(), alltoall: bool = True) -> dict:
    import torch

    device = torch.device(device_type)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        name, mem = props.name, float(props.total_memory)
    else:
        name = _cpu_name()
        mem = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    prof = {
        "device": {"name": name, "type": device.type, "memory_bytes": mem, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "dtype": str(dtype)},
        "matmul": profile_matmul(device, dtype, sizes.matmul, sizes.repeats),
        "memory": profile_memory(device, sizes.memory_mb, sizes.repeats),
        "expert": profile_expert(device, dtype, sizes.expert, sizes.repeats),
        "attention": profile_attention(device, dtype, sizes.attention, sizes.repeats),
        "alltoall": profile_alltoall(device.type, sizes.alltoall_world, sizes.alltoall_kb, sizes.repeats) if alltoall else [],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    summary = {
        "matmul_peak_flops": max(r["flops_per_s"] for r in prof["matmul"]),
        "memory_bandwidth": prof["memory"]["bandwidth"],
    }
    if prof["alltoall"]:
        bw, lat = fit_alpha_beta(prof["alltoall"])
        summary.update(alltoall_bw=bw, alltoall_latency=lat, alltoall_world=sizes.alltoall_world)
    prof["summary"] = summary
    return prof


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None,
                    help="profile JSON to write (default: profile_<device>.json in the current directory; the "
                         "committed common/profiles/local_cpu.json is replaced only when named here)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds); for tests")
    ap.add_argument("--no-alltoall", action="store_true", help="skip the multi-process all-to-all")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: --device cuda: no CUDA device is available to this torch "
                     f"({torch.__version__}); profile the CPU with --device cpu")
    out = Path(args.out) if args.out else Path(f"profile_{args.device}.json")
    prof = run_profile(args.device, QUICK if args.quick else ProfileSizes(), alltoall=not args.no_alltoall)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prof, indent=1) + "\n")
    s = prof["summary"]
    print(f"{prof['device']['name']}: matmul peak {s['matmul_peak_flops'] / 1e9:.1f} GFLOP/s, "
          f"memory {s['memory_bandwidth'] / 1e9:.1f} GB/s" +
          (f", all-to-all {s['alltoall_bw'] / 1e9:.2f} GB/s + {s['alltoall_latency'] * 1e6:.0f} us" if "alltoall_bw" in s else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
