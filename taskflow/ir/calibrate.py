"""Calibration statistics for int8 quantisation: per-value ranges and histograms.

Both kinds of statistic merge associatively and commutatively (a min/max; a sum of counts over
fixed bin edges), so a Dask map-reduce over chunks of calibration data may combine them in any
tree and get exactly what one pass over all the data gives. Histograms need their edges fixed
before the first chunk: a first pass collects ranges, the second histograms over ``[-R, R]``
with ``R`` from those ranges. :func:`choose_ranges` then turns the statistics into the
``(lo, hi)`` each activation is quantised over (min/max, a percentile of ``|x|``, or TensorRT's
entropy calibration), and :func:`qparams_u8` those into a u8 scale and zero point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from taskflow.errors import InputError

#: Bins of a histogram over ``[-R, R]`` (even, so ``|x|`` folds onto ``BINS // 2`` bins);
#: TensorRT's entropy calibration uses 2048 bins of ``|x|``, this gives 1024: half the
#: resolution, half the memory per chunk and the same search over 128 quantised levels.
BINS = 2048
#: u8 levels a quantised non-negative magnitude spans in the entropy search (TensorRT's 128).
QUANTIZED_BINS = 128
#: What each empty bin of a distribution borrows in the KL divergence (TensorRT / ONNX Runtime).
_SMOOTHING = 1e-4
METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class RangeStats:
    """The smallest and largest finite value seen (``inf``/``-inf`` where nothing was seen).

    Examples
    --------
    >>> a, b = RangeStats(-1.0, 2.0), RangeStats(0.5, 3.0)
    >>> a.merge(b)
    RangeStats(lo=-1.0, hi=3.0)
    """

    lo: float = float("inf")
    hi: float = float("-inf")

    def merge(self, other: RangeStats) -> RangeStats:
        """The range of both (associative, commutative; ``RangeStats()`` is its identity).

        Examples
        --------
        >>> RangeStats().merge(RangeStats(-1.0, 1.0))
        RangeStats(lo=-1.0, hi=1.0)
        """
        return RangeStats(min(self.lo, other.lo), max(self.hi, other.hi))

    @property
    def empty(self) -> bool:
        """Whether no finite value was seen.

        Examples
        --------
        >>> RangeStats().empty, RangeStats(0.0, 0.0).empty
        (True, False)
        """
        return self.lo > self.hi


@dataclass(frozen=True, eq=False)
class HistogramStats:
    """Counts of values in ``len(counts)`` equal bins over ``[-bound, bound]``.

    Values outside the range count in the end bins; non-finite values are not counted.

    Examples
    --------
    >>> h = HistogramStats(2.0, np.array([1, 0, 3, 1]))
    >>> h.merge(h).counts.tolist(), h.edges.tolist()
    ([2, 0, 6, 2], [-2.0, -1.0, 0.0, 1.0, 2.0])
    """

    bound: float
    counts: np.ndarray

    @property
    def edges(self) -> np.ndarray:
        """The ``len(counts) + 1`` bin edges.

        Examples
        --------
        >>> HistogramStats(1.0, np.zeros(2, np.int64)).edges.tolist()
        [-1.0, 0.0, 1.0]
        """
        return np.linspace(-self.bound, self.bound, len(self.counts) + 1)

    def merge(self, other: HistogramStats) -> HistogramStats:
        """Sum the counts of two histograms over the same edges.

        Raises
        ------
        InputError
            The edges differ (collect every chunk with the same ``ranges``).

        Examples
        --------
        >>> HistogramStats(1.0, np.array([1, 2])).merge(HistogramStats(1.0, np.array([0, 1])))
        HistogramStats(bound=1.0, counts=[1, 3])
        """
        if self.bound != other.bound or len(self.counts) != len(other.counts):
            raise InputError(
                f"cannot merge a histogram of {len(self.counts)} bins over +-{self.bound!r} "
                f"with one of {len(other.counts)} bins over +-{other.bound!r}; collect every "
                "chunk's histograms with the same ranges and bins")
        return HistogramStats(self.bound, self.counts + other.counts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HistogramStats) and self.bound == other.bound \
            and np.array_equal(self.counts, other.counts)

    def __repr__(self) -> str:
        return f"HistogramStats(bound={self.bound!r}, counts={self.counts.tolist()})"


Stats = RangeStats | HistogramStats


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    finite = np.isfinite(x)
    return x.reshape(-1) if finite.all() else x[finite]


def collect_ranges(values: Mapping[str, np.ndarray]) -> dict[str, RangeStats]:
    """Min and max of each array (non-finite values ignored).

    Examples
    --------
    >>> collect_ranges({"x": np.array([-1.0, 4.0, np.inf])})
    {'x': RangeStats(lo=-1.0, hi=4.0)}
    """
    out: dict[str, RangeStats] = {}
    for name, x in values.items():
        v = _finite(x)
        out[name] = RangeStats(float(v.min()), float(v.max())) if v.size else RangeStats()
    return out


def collect_histograms(values: Mapping[str, np.ndarray], ranges: Mapping[str, RangeStats],
                       bins: int = BINS) -> dict[str, HistogramStats]:
    """Histogram each array over ``[-R, R]``, ``R = max(|lo|, |hi|)`` of its (global) range.

    Parameters
    ----------
    values : mapping of str to numpy.ndarray
        This chunk's values by name; names without a range are skipped.
    ranges : mapping of str to RangeStats
        The ranges over *all* the calibration data (merged first pass), so every chunk's
        histogram has the same edges. An empty or all-zero range histograms over ``[-1, 1]``.
    bins : int
        An even number of bins.

    Examples
    --------
    >>> x = np.array([-1.0, 0.25, 0.5, 1.0])
    >>> collect_histograms({"x": x}, collect_ranges({"x": x}), bins=4)
    {'x': HistogramStats(bound=1.0, counts=[1, 0, 1, 2])}
    """
    if bins < 2 or bins % 2:
        raise InputError(f"bins={bins!r}: expected an even number of histogram bins >= 2, "
                         f"e.g. {BINS}")
    out: dict[str, HistogramStats] = {}
    for name, x in values.items():
        r = ranges.get(name)
        if r is None:
            continue
        bound = max(abs(r.lo), abs(r.hi)) if not r.empty else 0.0
        bound = bound if 0.0 < bound < np.inf else 1.0
        v = _finite(x).astype(np.float64, copy=False)
        idx = np.floor((v + bound) * (bins / (2.0 * bound))).astype(np.int64)
        counts = np.bincount(np.clip(idx, 0, bins - 1), minlength=bins)
        out[name] = HistogramStats(bound, counts.astype(np.int64, copy=False))
    return out


def merge(a: Mapping[str, Stats], b: Mapping[str, Stats]) -> dict[str, Stats]:
    """Merge two chunks' statistics (ranges or histograms) name by name.

    A name in only one of them is kept as is, so merging is associative and commutative.

    Examples
    --------
    >>> merge({"x": RangeStats(0.0, 1.0)}, {"x": RangeStats(-2.0, 0.5), "y": RangeStats(1, 2)})
    {'x': RangeStats(lo=-2.0, hi=1.0), 'y': RangeStats(lo=1, hi=2)}
    """
    out = dict(a)
    for name, s in b.items():
        out[name] = out[name].merge(s) if name in out else s
    return out


def choose_ranges(ranges: Mapping[str, RangeStats],
                  histograms: Mapping[str, HistogramStats] | None = None,
                  method: str = "minmax", percentile: float = 99.999,
                  ) -> dict[str, tuple[float, float]]:
    """The range ``(lo, hi)`` to quantise each value over; ``lo <= 0 <= hi`` always.

    Parameters
    ----------
    ranges : mapping of str to RangeStats
    histograms : mapping of str to HistogramStats, optional
        Needed by ``"percentile"`` and ``"entropy"``.
    method : {"minmax", "percentile", "entropy"}
        ``"minmax"``: ``[min(0, lo), max(0, hi)]``. ``"percentile"``: both tails clipped at
        the ``percentile`` of ``|x|``. ``"entropy"``: clipped at the ``|x|`` threshold whose
        128-level quantisation loses least information (KL divergence, TensorRT's calibrator).
        Clipping gives ``[max(lo, -T), min(hi, T)]`` with 0 kept in range.
    percentile : float
        In (0, 100].

    Raises
    ------
    InputError
        Unknown method, percentile out of range, or a histogram missing.

    Examples
    --------
    >>> x = np.r_[np.linspace(-1, 1, 10_000), 50.0]
    >>> r = collect_ranges({"x": x})
    >>> h = collect_histograms({"x": x}, r)
    >>> choose_ranges(r)
    {'x': (-1.0, 50.0)}
    >>> lo, hi = choose_ranges(r, h, "percentile", 99.9)["x"]
    >>> round(lo, 2), round(hi, 2)
    (-1.0, 1.03)
    """
    if method not in METHODS:
        raise InputError(f"calibration method {method!r} is unknown; expected one of {METHODS}")
    if not 0.0 < percentile <= 100.0:
        raise InputError(f"percentile {percentile!r} is outside (0, 100]; e.g. 99.999")
    out: dict[str, tuple[float, float]] = {}
    for name, r in ranges.items():
        lo, hi = (0.0, 0.0) if r.empty else (min(0.0, float(r.lo)), max(0.0, float(r.hi)))
        if method != "minmax" and lo != hi:
            h = (histograms or {}).get(name)
            if h is None:
                raise InputError(f"calibration method {method!r} needs a histogram of value "
                                 f"{name!r}; collect_histograms gives them")
            counts, width = _magnitudes(h)
            t = _percentile_threshold(counts, width, percentile) if method == "percentile" \
                else _entropy_threshold(counts, width)
            lo, hi = max(lo, -t), min(hi, t)
        out[name] = (lo, hi)
    return out


def _magnitudes(h: HistogramStats) -> tuple[np.ndarray, float]:
    """Counts of ``|x|`` in bins of width ``bound / (bins / 2)`` from 0, and that width."""
    half = len(h.counts) // 2
    folded = h.counts[half:] + h.counts[:half][::-1]
    return folded.astype(np.float64), h.bound / half


def _percentile_threshold(counts: np.ndarray, width: float, percentile: float) -> float:
    """The upper edge of the first ``|x|`` bin at which the cumulative mass reaches it."""
    cdf = np.cumsum(counts)
    if cdf[-1] == 0:
        return 0.0
    k = int(np.searchsorted(cdf, cdf[-1] * (percentile / 100.0)))
    return (min(k, len(counts) - 1) + 1) * width


def _entropy_threshold(counts: np.ndarray, width: float) -> float:
    """TensorRT's threshold: the first ``i`` bins of ``|x|`` (the rest clipped into the last)
    against their quantisation to :data:`QUANTIZED_BINS` levels; the least KL divergence wins.

    Every candidate ``i`` is one row of a matrix, so the search is a few array operations per
    block of :data:`_ROWS` candidates instead of a Python loop over ~900 of them.
    """
    n = len(counts)
    if n <= QUANTIZED_BINS or counts.sum() == 0:
        return n * width
    tail = np.cumsum(counts[::-1])[::-1]  # tail[k] = counts[k:].sum()
    csum = np.r_[0.0, np.cumsum(counts)]
    cnz = np.r_[0, np.cumsum(counts != 0)]
    best, best_i = np.inf, n
    for first in range(QUANTIZED_BINS, n + 1, _ROWS):
        i = np.arange(first, min(first + _ROWS, n + 1))[:, None]
        kl = _kl_rows(counts, tail, csum, cnz, i)
        k = int(np.argmin(kl))
        if kl[k] < best:
            best, best_i = float(kl[k]), int(i[k, 0])
    return best_i * width


#: Candidate thresholds evaluated together (rows of ``bins / 2`` float64 each: ~2 MB a block).
_ROWS = 256


def _kl_rows(counts: np.ndarray, tail: np.ndarray, csum: np.ndarray, cnz: np.ndarray,
             i: np.ndarray) -> np.ndarray:
    """KL(P_i || Q_i) for each candidate bin count ``i`` (a column vector)."""
    n, levels = len(counts), QUANTIZED_BINS
    j = np.arange(n)[None, :]
    inside = j < i
    # P: the first i bins, everything beyond clipped into bin i - 1
    ref = np.where(j == i - 1, tail[i - 1], np.where(inside, counts[None, :], 0.0))
    # Q: the first i bins (without the clipped tail) merged into `levels` chunks, each chunk's
    # mass spread evenly over the bins that are non-empty in P
    step = i // levels
    c = np.arange(levels)[None, :]
    start, end = c * step, np.where(c == levels - 1, i, (c + 1) * step)
    sums = csum[end] - csum[start]
    used = (cnz[end] - cnz[start]).astype(np.float64)
    used[:, -1] += (tail[i[:, 0] - 1] != 0).astype(np.float64) \
        - (counts[i[:, 0] - 1] != 0).astype(np.float64)
    # ... except bin 0, kept exact: 0 is a quantisation level (the zero point), and after a
    # Relu half the mass sits there; spread over its chunk it would make every threshold
    # whose chunks are wider than one bin look bad, clipping most of the positive values
    sums[:, 0] -= counts[0]
    used[:, 0] -= float(counts[0] != 0)
    chunk = np.minimum(j // step, levels - 1)
    q = np.take_along_axis(sums / np.maximum(used, 1.0), chunk, axis=1) * (ref != 0)
    q[:, 0] = ref[:, 0]
    p, q = _smooth(ref, inside), _smooth(q, inside)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(axis=1)


def _smooth(d: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Rows of ``d`` normalised, each empty bin inside the row given :data:`_SMOOTHING` of
    mass (so the KL divergence stays finite), then renormalised."""
    total = d.sum(axis=1, keepdims=True)
    d = d / np.where(total > 0, total, 1.0)
    d = np.where(inside & (d == 0), _SMOOTHING, d)
    return d / d.sum(axis=1, keepdims=True)


def qparams_u8(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """u8 scale and zero point for the range ``[min(0, lo), max(0, hi)]`` (ONNX Runtime's
    DynamicQuantizeLinear convention; an all-zero range has scale 1).

    Examples
    --------
    >>> qparams_u8(-1.0, 1.0)
    (np.float32(0.007843138), np.uint8(127))
    >>> qparams_u8(0.0, 0.0)
    (np.float32(1.0), np.uint8(0))
    """
    f32 = np.float32
    lo32, hi32 = f32(min(0.0, lo)), f32(max(0.0, hi))
    scale = f32(1.0) if hi32 == lo32 else f32(hi32 - lo32) / f32(255)
    zp = np.rint(np.clip(f32(0) - lo32 / scale, f32(0), f32(255)))
    return f32(scale), np.uint8(zp)
