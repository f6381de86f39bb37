"""Calibration statistics: chunk-wise statistics merge into the whole's, and the range choices
clip what they should."""

from __future__ import annotations

import numpy as np
import pytest
from taskflow.ops.quant import dynamic_quantize_linear

from taskflow.errors import InputError
from taskflow.ir.calibrate import (
    HistogramStats,
    RangeStats,
    choose_ranges,
    collect_histograms,
    collect_ranges,
    merge,
    qparams_u8,
)


def _values(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"relu": np.maximum(rng.standard_normal((n, 8)), 0).astype(np.float32),
            "signed": (3 * rng.standard_t(3, (n, 8))).astype(np.float32)}


def _chunks(values: dict[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    return [{k: v[i::parts] for k, v in values.items()} for i in range(parts)]


def test_chunk_statistics_merge_to_the_whole_in_any_tree():
    values = _values(np.random.default_rng(0), 1000)
    a, b, c = _chunks(values, 3)
    whole = collect_ranges(values)
    ranges = [collect_ranges(p) for p in (a, b, c)]
    assert merge(merge(ranges[0], ranges[1]), ranges[2]) == whole
    assert merge(ranges[2], merge(ranges[1], ranges[0])) == whole
    # histograms: every chunk binned over the edges of the merged (global) ranges
    hists = [collect_histograms(p, whole, bins=64) for p in (a, b, c)]
    expected = collect_histograms(values, whole, bins=64)
    assert merge(merge(hists[0], hists[1]), hists[2]) == expected
    assert merge(hists[0], merge(hists[2], hists[1])) == expected
    assert int(expected["signed"].counts.sum()) == values["signed"].size
    # a name seen in one chunk only is kept as is
    assert merge(ranges[0], {"other": RangeStats(-1.0, 1.0)})["other"] == RangeStats(-1.0, 1.0)


def test_histograms_over_different_edges_refuse_to_merge():
    a = HistogramStats(1.0, np.zeros(4, np.int64))
    with pytest.raises(InputError, match="same ranges"):
        a.merge(HistogramStats(2.0, np.zeros(4, np.int64)))
    with pytest.raises(InputError, match="even number"):
        collect_histograms({"x": np.ones(3)}, {"x": RangeStats(0.0, 1.0)}, bins=3)


def test_non_finite_and_empty_values():
    r = collect_ranges({"x": np.array([np.nan, -2.0, np.inf, 3.0]), "e": np.zeros(0)})
    assert r["x"] == RangeStats(-2.0, 3.0) and r["e"].empty
    assert choose_ranges(r) == {"x": (-2.0, 3.0), "e": (0.0, 0.0)}
    h = collect_histograms({"z": np.zeros(5)}, collect_ranges({"z": np.zeros(5)}), bins=4)
    assert h["z"].bound == 1.0 and h["z"].counts.tolist() == [0, 0, 5, 0]


def test_minmax_keeps_zero_in_range():
    r = collect_ranges({"pos": np.array([2.0, 5.0]), "neg": np.array([-4.0, -1.0])})
    assert choose_ranges(r) == {"pos": (0.0, 5.0), "neg": (-4.0, 0.0)}


def test_percentile_clips_an_outlier():
    x = np.r_[np.random.default_rng(1).uniform(-1, 1, 100_000), 100.0]
    r = collect_ranges({"x": x})
    lo, hi = choose_ranges(r, collect_histograms({"x": x}, r), "percentile", 99.99)["x"]
    assert lo == pytest.approx(-1.0, abs=1e-3)  # the clean tail: its own minimum
    assert 0.99 < hi < 1.2  # the outlier: clipped to the bin of the 99.99th |x| percentile
    assert choose_ranges(r)["x"][1] == 100.0


def test_entropy_clips_a_heavy_tail_but_not_a_uniform_distribution():
    rng = np.random.default_rng(2)
    for x, low, high in ((rng.standard_t(2, 100_000), 0.0, 0.5),
                         (rng.uniform(-1, 1, 100_000), 0.95, 1.0)):
        r = collect_ranges({"x": x})
        lo, hi = choose_ranges(r, collect_histograms({"x": x}, r), "entropy")["x"]
        bound = max(-r["x"].lo, r["x"].hi)
        assert low * bound <= max(-lo, hi) <= high * bound
        assert lo >= r["x"].lo and hi <= r["x"].hi


def test_choose_ranges_refuses_bad_requests():
    r = {"x": RangeStats(-1.0, 1.0)}
    with pytest.raises(InputError, match="unknown"):
        choose_ranges(r, method="kl")
    with pytest.raises(InputError, match="needs a histogram of value 'x'"):
        choose_ranges(r, method="entropy")
    with pytest.raises(InputError, match="outside"):
        choose_ranges(r, method="percentile", percentile=0.0)


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (0.0, 6.0), (-3.5, 0.0), (-0.2, 7.3),
                                    (0.0, 0.0), (-1e-3, 250.0), (1.0, 2.0)])
def test_qparams_are_onnx_dynamic_quantize_linear(lo, hi):
    x = np.array([lo, hi, (lo + hi) / 2], np.float32)
    _, scale, zero_point = dynamic_quantize_linear(x)
    s, z = qparams_u8(lo, hi)
    assert (s.dtype, z.dtype) == (np.float32, np.uint8)
    assert s == scale and z == zero_point
