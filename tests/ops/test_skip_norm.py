"""FusedAddLayerNorm's cpu kernel against its reference (Add, then LayerNormalization)."""

from __future__ import annotations

import numpy as np
import pytest

from taskflow import ops

#: float64 statistics against the reference's float32 ones: a few float32 ulps.
RTOL = 1e-5


#: every test here runs with 1, then 2 kernel threads (tests/ops/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_threads")


@pytest.mark.parametrize("shape,axis", [((2, 7, 33), -1), ((1, 1, 5), -1), ((64, 384), 1),
                                        ((3, 4, 6), 1), ((2, 300, 64), 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_add_layernorm_matches_reference(shape, axis, bias):
    rng = np.random.default_rng(len(shape) + shape[-1])
    x, skip = (3 * rng.standard_normal(shape, dtype=np.float32) + 1 for _ in range(2))
    d = int(np.prod(shape[axis % len(shape):]))
    scale = rng.standard_normal(shape[axis % len(shape):], dtype=np.float32)
    b = rng.standard_normal(scale.shape, dtype=np.float32) if bias else None
    spec = ops.get("FusedAddLayerNorm")
    want = spec.reference(x, skip, scale, b, axis=axis, epsilon=1e-12)
    got = spec.kernel("cpu")(x, skip, scale, b, axis=axis, epsilon=1e-12)
    assert d == scale.size
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * np.abs(w).max())
    np.testing.assert_array_equal(got[1], want[1])  # the sum is the same float32 add


@pytest.mark.parametrize("case", ["float64", "empty"])
def test_fused_add_layernorm_outside_the_fast_path_runs_the_reference(case):
    """(A skip broadcast over the leading axes runs compiled: see test_cpu_kernels.)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 8), dtype=np.float32)
    skip = rng.standard_normal((2, 5, 8), dtype=np.float32)
    if case == "float64":
        x, skip = x.astype(np.float64), skip.astype(np.float64)
    else:
        x, skip = x[:0], skip[:0]
    scale = np.ones(8, np.float32)
    spec = ops.get("FusedAddLayerNorm")
    for g, w in zip(spec.kernel("cpu")(x, skip, scale), spec.reference(x, skip, scale)):
        if case == "float64":  # compiled too: float64 sums in another order
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(g, w)
