"""LSTM predictors: one small LSTM per request type (the paper's), and one LSTM on the total rate split by the recent
type shares (the aggregate baseline).

Notation: N samples or forecasts, W window, J request types, H hidden size.

Each LSTM reads a window of one normalised series (rate / its training mean, so one hyper-parameter set works for any
rate scale), re-read relative to the window's own level, and predicts the next value as the window's mean plus a
learned correction scaled by that level. The output layer starts at zero, so an untrained LSTM is the moving average,
and the epoch kept is the one that scores best on held-out pairs (epoch 0 included): with the few hundred (window,
next) pairs an hour-long trace gives, this keeps the LSTM from fitting the arrival noise.

Training is deterministic: weights drawn from a seeded RNG (forked, so the caller's torch RNG is untouched), full-batch
Adam, and torch pinned to `threads` threads (the CPU LSTM kernels are deterministic at a fixed thread count; there is
no CUDA path here, so torch.use_deterministic_algorithms has nothing to switch).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from serving.predict.base import LSTMOptions, Predictor, PredictorKind

LEVEL_FLOOR = 0.1  # in units of the training mean: a window of all zeros still has a scale
_D = LSTMOptions()  # the defaults, in one place


class _WindowLSTM(nn.Module):
    """[N, W] normalised windows -> [N] normalised next value (window mean + correction)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each window is read relative to its own level (plus a floor, for windows of all zeros), so what the LSTM
        # learns about shape carries over when the level drifts away from the training mean.
        level = x.mean(dim=1, keepdim=True)  # [N, 1]
        scale = level + LEVEL_FLOOR
        out, _ = self.lstm((x / scale)[:, :, None])  # [N, W, H]
        return (level + scale * self.head(out[:, -1])).squeeze(-1)


@contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _scale(series: np.ndarray) -> np.ndarray:
    """[J] per-type normaliser: the training mean (1.0 for a type that never arrives, whose series stays 0)."""
    m = series.mean(axis=0)
    return np.where(m > 0, m, 1.0)


def _train(x: np.ndarray, window: int, hidden: int, epochs: int, lr: float, seed: int,
           val_share: float) -> _WindowLSTM:
    """An LSTM fitted to a normalised 1-D series x [T] (T >= window + 1) by full-batch Adam on the MSE of one-step
    forecasts over the (window, next) pairs.

    1. Pairs in time order; the last `val_share` of them (at least one, when there are two or more) are held out.
    2. Train on the rest for `epochs` epochs, scoring the held-out pairs before the first step and after each.
    3. Keep the weights that scored best (epoch 0 is the moving average itself): an hour-long trace gives a few
       hundred pairs at most, and an LSTM trained to the end on them fits the noise.
    """
    # Step 1
    idx = np.arange(len(x) - window)[:, None] + np.arange(window)[None, :]  # [N, W]
    xs = torch.tensor(x[idx], dtype=torch.float32)
    ys = torch.tensor(x[window:], dtype=torch.float32)
    n_val = min(max(int(round(val_share * len(ys))), 1), len(ys) - 1) if val_share > 0 and len(ys) >= 2 else 0
    n_fit = len(ys) - n_val
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _WindowLSTM(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def val_loss() -> float:
        if not n_val:
            return 0.0
        with torch.no_grad():
            return float(torch.mean((model(xs[n_fit:]) - ys[n_fit:]) ** 2))

    # Steps 2-3
    best, best_state = val_loss(), copy.deepcopy(model.state_dict())
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.mean((model(xs[:n_fit]) - ys[:n_fit]) ** 2)
        loss.backward()
        opt.step()
        v = val_loss()
        if not n_val or v < best:
            best, best_state = v, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return model


def _predict(model: _WindowLSTM, windows: np.ndarray) -> np.ndarray:
    """[N, W] normalised windows -> [N] normalised forecasts, clamped at 0 (rates are never negative)."""
    with torch.no_grad():
        y = model(torch.tensor(windows, dtype=torch.float32)).double().numpy()
    return np.maximum(y, 0.0)


def _check_options(kind: PredictorKind, hidden, epochs, lr, seed, threads, val_share) -> None:
    for key, v, lo in (("hidden", hidden, 1), ("epochs", epochs, 0), ("seed", seed, 0), ("threads", threads, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{kind.value} predictor option {key} must be an integer >= {lo}, got {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"{kind.value} predictor option lr must be > 0, got {lr!r}")
    if isinstance(val_share, bool) or not isinstance(val_share, (int, float)) or not 0 <= val_share < 1:
        raise ValueError(f"{kind.value} predictor option val_share must lie in [0, 1), got {val_share!r}")


class LSTMPredictor(Predictor):
    """One LSTM per request type, each on its own type's normalised history."""

    kind = PredictorKind.lstm

    def __init__(self, window: int, hidden: int = _D.hidden, epochs: int = _D.epochs, lr: float = _D.lr,
                 seed: int = _D.seed, threads: int = _D.threads, val_share: float = _D.val_share):
        super().__init__(window)
        _check_options(self.kind, hidden, epochs, lr, seed, threads, val_share)
        self.val_share = float(val_share)
        self.hidden, self.epochs, self.lr, self.seed, self.threads = int(hidden), int(epochs), float(lr), int(seed), \
            int(threads)
        self.scale: np.ndarray | None = None  # [J] normaliser per type
        self.models: list[_WindowLSTM] = []

    def _fit(self, series: np.ndarray) -> None:
        self.scale = _scale(series)
        z = series / self.scale  # [T, J]
        with _threads(self.threads):
            # Type j's LSTM is seeded with seed + j: independent draws, and a type's model does not depend on J.
            self.models = [_train(z[:, j], self.window, self.hidden, self.epochs, self.lr, self.seed + j,
                                 self.val_share)
                           for j in range(series.shape[1])]

    def _forecast_many(self, windows: np.ndarray) -> np.ndarray:
        z = windows / self.scale  # [N, W, J]
        with _threads(self.threads):
            cols = [_predict(m, z[:, :, j]) for j, m in enumerate(self.models)]
        return np.stack(cols, axis=1) * self.scale

    def options(self) -> dict:
        return {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr, "seed": self.seed, "threads": self.threads,
                "val_share": self.val_share}

    def _state(self) -> dict:
        state = {"scale": torch.tensor(self.scale, dtype=torch.float64)}
        for j, m in enumerate(self.models):
            state.update({f"type{j}.{k}": v for k, v in m.state_dict().items()})
        return state

    def _load_state(self, state: dict) -> None:
        self.scale = state["scale"].numpy().astype(np.float64)
        self.models = []
        for j in range(self.num_types):
            m = _WindowLSTM(self.hidden)
            m.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"type{j}.")})
            self.models.append(m.eval())


class AggregateLSTMPredictor(Predictor):
    """One LSTM on the total rate; the forecast total is split by each type's share of the last `share_window`
    intervals (default W). It cannot see a type rising while another falls at a constant total."""

    kind = PredictorKind.aggregate_lstm

    def __init__(self, window: int, hidden: int = _D.hidden, epochs: int = _D.epochs, lr: float = _D.lr,
                 seed: int = _D.seed, threads: int = _D.threads, val_share: float = _D.val_share,
                 share_window: int | None = None):
        super().__init__(window)
        _check_options(self.kind, hidden, epochs, lr, seed, threads, val_share)
        self.val_share = float(val_share)
        share_window = self.window if share_window is None else share_window
        if isinstance(share_window, bool) or not isinstance(share_window, (int, np.integer)) or \
                not 1 <= share_window <= self.window:
            raise ValueError(f"aggregate_lstm predictor option share_window must be an integer in [1, window="
                             f"{self.window}], got {share_window!r}")
        self.hidden, self.epochs, self.lr, self.seed, self.threads = int(hidden), int(epochs), float(lr), int(seed), \
            int(threads)
        self.share_window = int(share_window)
        self.scale: float | None = None  # normaliser of the total rate
        self.model: _WindowLSTM | None = None

    def _fit(self, series: np.ndarray) -> None:
        total = series.sum(axis=1)  # [T]
        self.scale = float(_scale(total[:, None])[0])
        with _threads(self.threads):
            self.model = _train(total / self.scale, self.window, self.hidden, self.epochs, self.lr, self.seed,
                                self.val_share)

    def _forecast_many(self, windows: np.ndarray) -> np.ndarray:
        with _threads(self.threads):
            total = _predict(self.model, windows.sum(axis=2) / self.scale) * self.scale  # [N]
        recent = windows[:, -self.share_window :].sum(axis=1)  # [N, J]
        tot = recent.sum(axis=1, keepdims=True)
        j = windows.shape[2]
        shares = np.divide(recent, tot, out=np.full_like(recent, 1.0 / j), where=tot > 0)  # no arrivals: even split
        return total[:, None] * shares

    def options(self) -> dict:
        return {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr, "seed": self.seed, "threads": self.threads,
                "val_share": self.val_share, "share_window": self.share_window}

    def _state(self) -> dict:
        return {"scale": torch.tensor(self.scale, dtype=torch.float64), **{f"total.{k}": v for k, v in
                                                                          self.model.state_dict().items()}}

    def _load_state(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.model = _WindowLSTM(self.hidden)
        self.model.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("total.")})
        self.model.eval()
