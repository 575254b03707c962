"""Rule-based predictors (nothing learned: fit only records J): moving average, EMA, seasonal-naive.

Notation: N forecasts, W window, J request types.
"""

from __future__ import annotations

import numpy as np

from serving.predict.base import Predictor, PredictorKind


class MovingAverage(Predictor):
    """The mean of the last W intervals, per type."""

    kind = PredictorKind.moving_average

    def _fit(self, series: np.ndarray) -> None:
        pass

    def _forecast_many(self, windows: np.ndarray) -> np.ndarray:
        return windows.mean(axis=1)

    def options(self) -> dict:
        return {}


class EMA(Predictor):
    """value <- alpha * rate + (1 - alpha) * value over the last W intervals, starting from the oldest one (so a
    forecast reads exactly W intervals, like every other predictor)."""

    kind = PredictorKind.ema

    def __init__(self, window: int, alpha: float = 0.3):
        super().__init__(window)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"ema predictor option alpha must lie in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        # The recursion unrolled: weight (1 - alpha)^(W-1) on the oldest interval, alpha (1 - alpha)^(W-1-k) on k >= 1.
        k = np.arange(self.window)
        w = self.alpha * (1.0 - self.alpha) ** (self.window - 1 - k)
        w[0] = (1.0 - self.alpha) ** (self.window - 1)
        self._weights = w  # [W], sums to 1

    def _fit(self, series: np.ndarray) -> None:
        pass

    def _forecast_many(self, windows: np.ndarray) -> np.ndarray:
        return np.einsum("nwj,w->nj", windows, self._weights)

    def options(self) -> dict:
        return {"alpha": self.alpha}


class SeasonalNaive(Predictor):
    """The rate `period` intervals before the forecast one (period <= W; default W)."""

    kind = PredictorKind.seasonal_naive

    def __init__(self, window: int, period: int | None = None):
        super().__init__(window)
        period = self.window if period is None else period
        if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or not 1 <= period <= self.window:
            raise ValueError(f"seasonal_naive predictor option period must be an integer in [1, window={self.window}], "
                             f"got {period!r}")
        self.period = int(period)

    def _fit(self, series: np.ndarray) -> None:
        pass

    def _forecast_many(self, windows: np.ndarray) -> np.ndarray:
        return windows[:, self.window - self.period].copy()

    def options(self) -> dict:
        return {"period": self.period}
