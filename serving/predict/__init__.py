"""Per-type workload predictors: forecast the next interval's arrival rate of each request type from the last W
intervals (OServe's temporal half reads these forecasts to schedule ahead).

    p = make_predictor(PredictorKind.lstm, window=50).fit(rates[:head])   # rates [T, J] from common.stats.type_rates
    f = rolling_forecast(p, rates, start=head)                             # [T - head, J] one-step-ahead
    rrmse(rates[head:], f); p.save("lstm.pt"); load_predictor("lstm.pt")
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.predict.base import (
    FORMAT,
    VERSION,
    LSTMOptions,
    Predictor,
    PredictorKind,
    poisson_floor,
    rolling_forecast,
    rrmse,
)
from serving.predict.rules import EMA, MovingAverage, SeasonalNaive

__all__ = ["LSTMOptions", "Predictor", "PredictorKind", "make_predictor", "load_predictor", "poisson_floor",
           "rolling_forecast", "rrmse"]


def registry() -> dict[PredictorKind, type[Predictor]]:
    """One line per predictor: a new one is a Predictor subclass plus its entry here. The LSTM classes are imported
    on first use, so that importing this package (e.g. for PredictorKind in a config schema) does not load torch."""
    from serving.predict.lstm import AggregateLSTMPredictor, LSTMPredictor

    return {
        PredictorKind.lstm: LSTMPredictor,
        PredictorKind.aggregate_lstm: AggregateLSTMPredictor,
        PredictorKind.moving_average: MovingAverage,
        PredictorKind.ema: EMA,
        PredictorKind.seasonal_naive: SeasonalNaive,
    }


def make_predictor(kind: PredictorKind, window: int, **options) -> Predictor:
    """An unfitted predictor of `kind` reading `window` intervals; options are its class's keyword arguments
    (lstm / aggregate_lstm: LSTMOptions' fields (+ share_window); ema: alpha; seasonal_naive: period)."""
    try:
        cls = registry()[PredictorKind(kind)]
    except ValueError:
        raise ValueError(f"unknown predictor kind {kind!r}; known: {[k.value for k in PredictorKind]}") from None
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "window"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{cls.kind.value} predictor: unknown option(s) {unknown}; it takes {sorted(allowed)}")
    return cls(window, **options)


def load_predictor(path) -> Predictor:
    """The predictor that Predictor.save wrote to `path`; a missing, foreign or corrupt file is a one-line error
    naming it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictor file {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(blob["header"])
        state = blob["state"]
        ok = header.get("format") == FORMAT
    except Exception as exc:  # torch's unpickler raises many types on a foreign or truncated file
        raise ValueError(f"predictor file {path} is not a readable loadwise predictor: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not ok:
        raise ValueError(f"predictor file {path} is not a loadwise predictor (no '{FORMAT}' header)")
    if header.get("version") != VERSION:
        raise ValueError(f"predictor file {path} has format version {header.get('version')}; this code reads {VERSION}")
    try:
        p = make_predictor(PredictorKind(header["kind"]), header["window"], **header["options"])
        p.num_types = int(header["num_types"])
        p._load_state(state)
    except Exception as exc:
        raise ValueError(f"predictor file {path} is corrupt: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return p
