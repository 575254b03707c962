"""The predictor contract, input checks, one-step-ahead rolling evaluation, RRMSE, and save/load.

Notation: T intervals, J request types, W window (intervals of history a forecast reads). A series is [T, J]
per-interval arrival rates in requests/s (common.stats.type_rates), finite and >= 0.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

FORMAT = "loadwise-predictor"  # the header's "format" field: tells a predictor file from any other torch file
VERSION = 1


class PredictorKind(str, Enum):
    lstm = "lstm"  # one small LSTM per request type, on that type's own history (the paper's)
    aggregate_lstm = "aggregate_lstm"  # one LSTM on the total rate, split by the recent type shares
    moving_average = "moving_average"  # mean of the last W intervals
    ema = "ema"  # exponential moving average over the last W intervals
    seasonal_naive = "seasonal_naive"  # the rate one period (in intervals) ago


# Not frozen: a Hydra schema nests this class, and OmegaConf makes a frozen dataclass read-only (no overrides).
@dataclass
class LSTMOptions:
    """Hyper-parameters of the LSTM predictors (keyword options of make_predictor; these are the defaults)."""

    # Hidden size H of each LSTM (one layer).
    hidden: int = 16
    # Full-batch Adam steps (the kept weights are those of the best held-out epoch: lstm._train).
    epochs: int = 150
    lr: float = 0.01
    # Weights are drawn from this seed (type j's LSTM from seed + j).
    seed: int = 0
    # torch threads while fitting and forecasting (results are bit-identical only at one fixed count).
    threads: int = 1
    # Share of the latest (window, next) training pairs held out to pick the epoch.
    val_share: float = 0.2


def check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"predictor window must be an integer >= 1, got {window!r}")
    return int(window)


def check_series(series, name: str, min_len: int, num_types: int | None = None) -> np.ndarray:
    """[T, J] float64 copy of `series`, or a one-line ValueError naming `name` and what is wrong."""
    a = np.asarray(series, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must be a [T, J] array of per-interval rates, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite rates (NaN or inf)")
    if (a < 0).any():
        raise ValueError(f"{name} holds negative rates (min {a.min():g}); rates are requests/s >= 0")
    if num_types is not None and a.shape[1] != num_types:
        raise ValueError(f"{name} has J={a.shape[1]} request types; the predictor was fitted on J={num_types}")
    if a.shape[0] < min_len:
        raise ValueError(f"{name} has {a.shape[0]} intervals; it needs at least {min_len}")
    return a


class Predictor(ABC):
    """Forecasts the next interval's per-type rates from the last `window` intervals.

    fit() learns from a [T, J] series (T >= window + 1: at least one (window, next) pair) and returns self; it is
    seeded and deterministic. forecast() is pure: the same history always gives the same [J] forecast, >= 0.
    """

    kind: PredictorKind
    window: int
    num_types: int | None  # J seen by fit(); None before

    def __init__(self, window: int):
        self.window = check_window(window)
        self.num_types = None

    # -- the contract ------------------------------------------------------------------------------------------------

    def fit(self, series) -> Predictor:
        s = check_series(series, f"{self.kind.value} fit series", self.window + 1)
        self.num_types = s.shape[1]
        self._fit(s)
        return self

    def forecast(self, history) -> np.ndarray:
        """history [t, J], t >= window -> [J] forecast rates for interval t."""
        h = self._history(history, "forecast history")
        return self._forecast_many(h[None, -self.window :])[0]

    def save(self, path) -> None:
        """One torch file: {"header": JSON text (format, kind, window, J, options), "state": tensors}."""
        import torch

        if self.num_types is None:
            raise ValueError(f"{self.kind.value} predictor: fit it before saving")
        header = {"format": FORMAT, "version": VERSION, "kind": self.kind.value, "window": self.window,
                  "num_types": self.num_types, "options": self.options()}
        torch.save({"header": json.dumps(header), "state": self._state()}, Path(path))

    # -- what a subclass supplies ------------------------------------------------------------------------------------

    @abstractmethod
    def _fit(self, series: np.ndarray) -> None:
        """Learn from a checked [T, J] series (T >= window + 1)."""

    @abstractmethod
    def _forecast_many(self, windows: np.ndarray) -> np.ndarray:
        """[N, W, J] checked windows of history -> [N, J] forecasts (>= 0) of the interval after each."""

    @abstractmethod
    def options(self) -> dict:
        """The make_predictor options that rebuild this predictor (JSON values)."""

    def _state(self) -> dict:
        """Learned tensors to save (none for the rule-based predictors)."""
        return {}

    def _load_state(self, state: dict) -> None:
        """Restore what _state() returned (a rule-based predictor saved none)."""
        if state:
            raise ValueError(f"{self.kind.value} predictor holds no learned state, got keys {sorted(state)[:3]}")

    # -- shared ------------------------------------------------------------------------------------------------------

    def _history(self, history, name: str) -> np.ndarray:
        if self.num_types is None:
            raise ValueError(f"{self.kind.value} predictor: call fit() before forecasting")
        return check_series(history, name, self.window, self.num_types)


def rolling_forecast(predictor: Predictor, series, start: int) -> np.ndarray:
    """[T - start, J] one-step-ahead forecasts of series[start:]: row i forecasts interval start + i from the
    `window` intervals before it (the real ones, never earlier forecasts). start >= predictor.window."""
    s = predictor._history(series, "rolling_forecast series")
    w = predictor.window
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not w <= start <= s.shape[0]:
        raise ValueError(f"rolling_forecast start must be an integer in [window={w}, T={s.shape[0]}], got {start!r}")
    idx = np.arange(start, s.shape[0])[:, None] - w + np.arange(w)[None, :]  # [N, W] history rows of each forecast
    if idx.shape[0] == 0:
        return np.zeros((0, s.shape[1]))
    return predictor._forecast_many(s[idx])


def rrmse(actual, forecast) -> float:
    """Relative RMSE: sqrt(mean((forecast - actual)^2)) / mean(actual), over all entries (intervals and types)."""
    a = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    if a.shape != f.shape or a.size == 0:
        raise ValueError(f"rrmse: actual {a.shape} and forecast {f.shape} must be one non-empty shape")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(f))):
        raise ValueError("rrmse: actual and forecast must be finite")
    mean = a.mean()
    if not mean > 0:
        raise ValueError(f"rrmse: the mean actual rate must be > 0, got {mean:g}")
    return float(np.sqrt(np.mean((f - a) ** 2)) / mean)


def poisson_floor(actual, interval_s: float) -> float:
    """The RRMSE that even the true rate would score if arrivals were Poisson: a bin of interval_s seconds at rate
    lambda counts Poisson(lambda * interval_s) arrivals, so the observed rate has variance lambda / interval_s.
    The actual rates [T, J] stand in for the unknown true ones. Halving the bin doubles this noise variance."""
    a = np.asarray(actual, dtype=np.float64)
    if not interval_s > 0:
        raise ValueError(f"poisson_floor: interval_s must be > 0, got {interval_s!r}")
    mean = a.mean() if a.size else 0.0
    if not mean > 0:
        raise ValueError(f"poisson_floor: the mean actual rate must be > 0, got {mean:g}")
    return float(np.sqrt(np.mean(a / interval_s)) / mean)
