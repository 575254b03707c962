"""What a controller reads the next interval's rates from: a Predictor (serving/predict) or the oracle.

A forecaster has `window` (intervals of history a forecast reads) and `forecast(history [t, J]) -> [J]` rates of
interval t, req/s; serving.predict.Predictor satisfies this.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Forecaster(Protocol):
    window: int

    def forecast(self, history: np.ndarray) -> np.ndarray: ...


class Oracle:
    """The real rates of the interval asked for: separates the policy's quality from the predictor's error."""

    window = 1

    def __init__(self, series: np.ndarray):
        self.series = np.asarray(series, float)  # [T, J] per-interval rates of the whole trace

    def forecast(self, history: np.ndarray) -> np.ndarray:
        t = len(history)
        return self.series[min(t, len(self.series) - 1)].copy()


class LastValue:
    """The last interval's rates (a naive forecaster for tests and stand-ins)."""

    def __init__(self, window: int = 1):
        self.window = int(window)

    def forecast(self, history: np.ndarray) -> np.ndarray:
        return np.asarray(history, float)[-1].copy()


def check_history(num_intervals: int, window: int, key: str = "window") -> None:
    """One-line error when a series has fewer intervals than a forecast reads."""
    if num_intervals < window + 1:
        raise ValueError(f"{key}: the trace has {num_intervals} intervals, fewer than the predictor's window "
                         f"{window} + 1 (a forecast needs {window} intervals of history and one to forecast)")
