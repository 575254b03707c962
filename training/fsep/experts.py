"""Expert compute over rows grouped by slot: every slot's SwiGLU expert as one op per matrix (no communication).

Notation: R rows, H hidden, F expert FFN size, G groups (slots of this device).
Rows arrive sorted by group: rows ends[g-1] .. ends[g] - 1 go through expert g (w1[g], w3[g] [F, H], w2[g] [H, F]).

Two kernels, one result:
  grouped GEMM   `torch._grouped_mm`, one call per matrix over all groups (Megatron's grouped GEMM). Its CUDA fast
                 path needs bf16 operands on SM90/SM100 and 16-byte aligned strides; elsewhere on CUDA it falls back to
                 a loop that reads the offsets back to the host (a sync per call), and on the CPU its backward rejects
                 broadcast gradients. So it runs where it is fast: bf16 on SM90+.
  per-group      one matmul per non-empty group over its contiguous rows (sizes already on the host from the count
                 exchange, so no sync). Exact for any shape; the CPU and fp32 path. A padded [G, max rows, H] batched
                 matmul would also be one op, but pads every group to the largest (an imbalance's worth of wasted
                 flops and a padding copy each way), where G matmuls on a CPU cost no more than one.
"""

from __future__ import annotations

import torch
from torch import nn

from training.moe.reference import swiglu


def grouped_mm_fast(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes its fused kernel for rows x [R, H] and weights w [G, F, H]: bf16 on a CUDA
    device of compute capability 9 or 10, both matrix dims multiples of 8 (16-byte aligned strides)."""
    return (x.is_cuda and x.dtype == w.dtype == torch.bfloat16 and w.shape[1] % 8 == 0 and w.shape[2] % 8 == 0
            and torch.cuda.get_device_capability(x.device)[0] in (9, 10))


def grouped_swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, sizes: list[int],
                   ends: torch.Tensor, max_rows: int | None = None, grouped_mm: bool | None = None) -> torch.Tensor:
    """x [R, H] sorted by group; w1, w3 [G, F, H], w2 [G, H, F]; sizes [G] rows per group (host); ends [G] int32
    cumulative sizes on x's device. -> [R, H]. max_rows: cut a group into matmuls of at most this many rows (a CPU
    cache tile; per-group kernel only). grouped_mm: force a kernel (None: `grouped_mm_fast`)."""
    if grouped_mm if grouped_mm is not None else grouped_mm_fast(x, w1):
        def mm(a, w):
            return torch._grouped_mm(a, w.transpose(1, 2), offs=ends)

        return mm(nn.functional.silu(mm(x, w1)) * mm(x, w3), w2)
    # unbind: its backward is one stack, where indexing w1[g] per group would zero-fill a [G, F, H] gradient each.
    mats = list(zip(w1.unbind(0), w3.unbind(0), w2.unbind(0)))
    outs = [swiglu(piece, *mats[g]) for g, rows in enumerate(x.split(sizes)) if len(rows)
            for piece in (rows.split(max_rows) if max_rows else (rows,))]
    # With no rows at all, one empty matmul still ties the output to the experts, so every device runs the restore
    # backward (a collective) even when it received no tokens.
    return (torch.cat(outs) if len(outs) > 1 else outs[0]) if outs else swiglu(x, *mats[0])
