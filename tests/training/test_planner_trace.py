"""`laer` on the whole real SmartMoE trace reproduces the LAER-MoE paper's planner figures (slow; needs the data)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.planner_quality import load_counts
from training.planner import make_planner
from training.routing import fsep_summary

# (C, oracle, lagged) mean max/mean device tokens of the paper's C++ planner with the FSEP rule, 2 nodes x 8 devices.
PAPER = [(2, 5.80, 5.80), (4, 2.91, 2.91), (8, 1.038, 1.057)]


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("c, oracle_ref, lagged_ref", PAPER)
def test_laer_reproduces_paper(data_path, c, oracle_ref, lagged_ref):
    counts = load_counts(data_path("smartmoe_expert_trace/smartmoe_counts.npz"))
    iters, ranks, layers, mbs, e = counts.shape
    planner = make_planner("laer", ranks, c, 8)
    oracle, lagged = [], []
    for layer in range(layers):
        seq = counts[:, :, layer].transpose(0, 2, 1, 3).reshape(iters * mbs, ranks, e)
        for t in range(5, iters * mbs, mbs):  # one micro-batch per sampled iteration
            tok = planner.plan(seq[t]).device_tokens
            oracle.append(tok.max() / tok.mean())
            plan = planner.plan(seq[t - 5:t].sum(0))
            tok = fsep_summary(seq[t], plan.layout, 8).device_tokens
            lagged.append(tok.max() / tok.mean())
    # The paper quotes 2-4 significant digits; our sampled trace (every 10th iteration) makes the window staler.
    assert np.mean(oracle) == pytest.approx(oracle_ref, abs=0.02 * oracle_ref)
    assert np.mean(lagged) == pytest.approx(lagged_ref, abs=0.02 * lagged_ref)
