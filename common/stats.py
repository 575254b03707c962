"""Load statistics: windowed and smoothed expert load, imbalance metrics, and request-workload statistics.

Notation: R source devices, E experts, Q requests, K request types, B time bins.
Expert-load inputs are per-(source device, expert) token counts, shape [R, E] (any fixed shape works).
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Expert load over time
# ---------------------------------------------------------------------------------------------------------------------


class SlidingWindowLoad:
    """Mean of the last `window` pushed count arrays (fewer while the window fills)."""

    def __init__(self, window: int):
        if not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"SlidingWindowLoad: window must be an integer >= 1, got {window!r}")
        self.window = int(window)
        self._items: deque[np.ndarray] = deque()
        self._sum: np.ndarray | None = None

    def push(self, counts) -> None:
        x = np.array(counts, dtype=np.float64)  # a private copy: the window must not see later edits by the caller
        if self._sum is not None and x.shape != self._sum.shape:
            raise ValueError(f"SlidingWindowLoad.push: shape {x.shape} differs from earlier pushes {self._sum.shape}")
        self._items.append(x)
        self._sum = x.copy() if self._sum is None else self._sum + x
        if len(self._items) > self.window:
            self._sum -= self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def mean(self) -> np.ndarray:
        if not self._items:
            raise ValueError("SlidingWindowLoad.mean: nothing pushed yet")
        # Re-summing the (at most `window`) items would avoid drift from the running sum; counts are integers, so
        # the running float sum stays exact below 2**53 and we keep the O(1) update.
        return self._sum / len(self._items)


class EMALoad:
    """Exponential moving average: value <- alpha * counts + (1 - alpha) * value.

    The first push sets value = counts (no bias towards zero, unlike starting from a zero array)."""

    def __init__(self, alpha: float):
        if not (0.0 < alpha <= 1.0):
            raise ValueError(f"EMALoad: alpha must be in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self._value: np.ndarray | None = None

    def push(self, counts) -> None:
        x = np.asarray(counts, dtype=np.float64)
        if self._value is None:
            self._value = x.copy()
            return
        if x.shape != self._value.shape:
            raise ValueError(f"EMALoad.push: shape {x.shape} differs from earlier pushes {self._value.shape}")
        self._value = self.alpha * x + (1.0 - self.alpha) * self._value

    @property
    def value(self) -> np.ndarray:
        if self._value is None:
            raise ValueError("EMALoad.value: nothing pushed yet")
        return self._value.copy()


def _loads(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size and (not np.all(np.isfinite(a)) or (a < 0).any()):
        raise ValueError(f"{name}: loads must be finite and >= 0")
    return a


def imbalance(x, axis: int = -1) -> np.ndarray:
    """max / mean along `axis` (1 = perfectly balanced, n = everything on one of n). A slice of all zeros counts as
    balanced and gives 1.0, never NaN. Loads must be >= 0."""
    a = _loads(x, "imbalance")
    mx, mean = a.max(axis=axis), a.mean(axis=axis)
    return np.divide(mx, mean, out=np.ones_like(mean), where=mean > 0)


def cv(x, axis: int = -1) -> np.ndarray:
    """Coefficient of variation, population std / mean along `axis`; 0.0 for a slice of all zeros. Loads must be >= 0."""
    a = _loads(x, "cv")
    sd, mean = a.std(axis=axis), a.mean(axis=axis)
    return np.divide(sd, mean, out=np.zeros_like(mean), where=mean > 0)


def static_ep_imbalance(loads, num_devices: int) -> float:
    """max / mean tokens computed per device under static expert parallelism (device d holds experts
    d*E/N .. (d+1)*E/N - 1): the imbalance a re-layout has to remove. loads [..., E], summed over leading axes
    (e.g. [R, E] per source device); E must divide into num_devices equal groups."""
    a = _loads(loads, "static_ep_imbalance")
    per_expert = a.reshape(-1, a.shape[-1]).sum(0)  # [E]
    if num_devices < 1 or per_expert.size % num_devices:
        raise ValueError(f"static_ep_imbalance: {per_expert.size} experts do not split over {num_devices} devices")
    return float(imbalance(per_expert.reshape(num_devices, -1).sum(1)))


# ---------------------------------------------------------------------------------------------------------------------
# Request workload
# ---------------------------------------------------------------------------------------------------------------------


def _bin_index(arrival_s, interval_s: float, num_bins: int | None) -> tuple[np.ndarray, int]:
    t = np.asarray(arrival_s, dtype=np.float64)
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
    if t.ndim != 1 or not np.all(np.isfinite(t)) or (t < 0).any():
        raise ValueError("arrival_s must be a 1-D array of finite times >= 0")
    idx = np.floor(t / interval_s).astype(np.int64)  # bin b covers [b * interval, (b + 1) * interval)
    needed = int(idx.max()) + 1 if idx.size else 0
    if num_bins is None:
        num_bins = needed
    elif needed > num_bins:
        raise ValueError(f"num_bins={num_bins} is too few: arrivals reach bin {needed - 1} (interval {interval_s} s)")
    return idx, num_bins


def bin_arrivals(arrival_s, interval_s: float, num_bins: int | None = None) -> np.ndarray:
    """[B] number of arrivals in each bin [b*interval, (b+1)*interval). B defaults to just enough bins for the last
    arrival; a given `num_bins` too small for the arrivals is an error (none are dropped)."""
    idx, b = _bin_index(arrival_s, interval_s, num_bins)
    return np.bincount(idx, minlength=b)


@dataclass(frozen=True, eq=False)
class RequestTypes:
    """Request types as k-means centers in (log1p input tokens, log1p output tokens) space, sorted by center."""

    centers: np.ndarray  # [K, 2] (log1p input, log1p output) of each type's center; rows sorted lexicographically

    def __post_init__(self):
        c = np.array(self.centers, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] < 1 or not np.all(np.isfinite(c)):
            raise ValueError(f"RequestTypes.centers must be a finite [K, 2] array, got shape {c.shape}")
        c.setflags(write=False)
        object.__setattr__(self, "centers", c)

    @property
    def num_types(self) -> int:
        return self.centers.shape[0]

    def centers_tokens(self) -> np.ndarray:
        """[K, 2] centers back in tokens (expm1), i.e. geometric-mean-like (input, output) lengths per type."""
        return np.expm1(self.centers)

    def assign(self, input_tokens, output_tokens) -> np.ndarray:
        """[Q] index of the nearest center (Euclidean in log1p space; ties go to the lower index)."""
        return _nearest(_features(input_tokens, output_tokens), self.centers)


def _features(input_tokens, output_tokens) -> np.ndarray:
    """[Q, 2] (log1p input, log1p output): lengths span 1..10^4, and log makes types differ by ratio, not offset."""
    a = np.asarray(input_tokens, dtype=np.float64)
    b = np.asarray(output_tokens, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"input and output lengths must be 1-D of one length, got {a.shape} and {b.shape}")
    if (a < 0).any() or (b < 0).any() or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("request lengths must be finite and >= 0")
    return np.stack([np.log1p(a), np.log1p(b)], axis=1)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """[Q, K] squared distances, computed per coordinate (no |x|^2 - 2xc + |c|^2 cancellation)."""
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.argmin(_sq_dist(x, c), axis=1)  # argmin takes the first minimum: ties to the lower index


def fit_request_types(input_tokens, output_tokens, k: int = 4, seed: int = 0, max_iter: int = 300) -> RequestTypes:
    """k-means over (log1p input, log1p output), deterministic for a given seed.

    1. Check there are at least k distinct points (k-means with fewer has no answer without empty clusters).
    2. scipy's kmeans2: k-means++ seeding (chosen points have distance 0, so the k centers are distinct points), then
       max_iter Lloyd iterations (it has no early stop; assignments stop changing long before 300 on the Azure traces).
    3. Keep k clusters: a cluster that empties takes the point farthest from its own center, and Lloyd resumes.
    4. Sort centers lexicographically so type 0 is the shortest-prompt type and labels do not depend on the seeding.
    """
    x = _features(input_tokens, output_tokens)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"fit_request_types: k must be an integer >= 1, got {k!r}")
    # Step 1
    distinct = np.unique(x, axis=0).shape[0]
    if distinct < k:
        raise ValueError(
            f"fit_request_types: k={k} types requested but only {distinct} distinct (input, output) length pairs "
            f"among {x.shape[0]} requests; use k <= {distinct}"
        )
    # Steps 2 and 3
    c = _kmeans(x, int(k), max_iter, np.random.default_rng(seed))
    # Step 4
    order = np.lexsort((c[:, 1], c[:, 0]))
    return RequestTypes(c[order])


def _kmeans(x: np.ndarray, init, max_iter: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """[K, 2] centers: kmeans2 from `init` (k: k-means++ drawn with rng; or a [K, 2] array of centers), refilling
    clusters that end empty (steps 2 and 3 of fit_request_types)."""
    # Imported when used: the experiments' config schema imports serving, which imports this module, and building a
    # config (every `loadwise` call) should not pay for loading scipy (~0.35 s).
    from scipy.cluster.vq import kmeans2

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "One of the clusters is empty")  # step 3 handles it
        if isinstance(init, np.ndarray):
            c, _ = kmeans2(x, init.astype(np.float64), iter=max_iter, minit="matrix", missing="warn")
        else:
            c, _ = kmeans2(x, init, iter=max_iter, minit="++", seed=rng, missing="warn")
        for _ in range(c.shape[0]):  # each round fills at least one empty cluster
            d = _sq_dist(x, c)
            lab = np.argmin(d, axis=1)
            counts = np.bincount(lab, minlength=c.shape[0])
            if counts.all():
                break
            own = d[np.arange(x.shape[0]), lab]
            for j in np.flatnonzero(counts == 0):
                own[counts[lab] <= 1] = -1.0  # never empty another cluster to fill this one
                far = int(np.argmax(own))
                counts[lab[far]] -= 1
                counts[j] = 1
                c[j], own[far] = x[far], -1.0
            c, _ = kmeans2(x, c, iter=max_iter, minit="matrix", missing="warn")
    return c


def type_rates(arrival_s, labels, num_types: int, interval_s: float, num_bins: int | None = None) -> np.ndarray:
    """[B, K] arrival rate (requests/s) of each type in each bin [b*interval, (b+1)*interval)."""
    idx, b = _bin_index(arrival_s, interval_s, num_bins)
    lab = np.asarray(labels)
    if lab.shape != idx.shape or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, one per arrival ({idx.shape[0]}), got {lab.shape} {lab.dtype}")
    if lab.size and (lab.min() < 0 or lab.max() >= num_types):
        raise ValueError(f"labels must lie in [0, {num_types}), got range [{lab.min()}, {lab.max()}]")
    counts = np.bincount(idx * num_types + lab, minlength=b * num_types).reshape(b, num_types)
    return counts / interval_s
