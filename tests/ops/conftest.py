"""Fixtures the op and kernel tests share."""

from __future__ import annotations

import pytest
from taskflow.ops.cpu import direct

from taskflow.dask import threads


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def kernel_threads(request):
    """Run the test with 1, then 2 kernel threads (the kernels split work by thread count)."""
    threads.apply_kernel_threads(request.param)
    yield request.param
    threads.reset_kernel_threads()


@pytest.fixture
def direct_kernels():
    """Route convolutions as on an AVX2 machine: the 8-lane direct kernels wherever their
    limits let them run, also where MKL runs AVX-512 (which turns 1x1 and dense ones off)."""
    with direct.routed_as(False):
        yield


@pytest.fixture(params=[False, True], ids=["direct", "wide-gemm"])
def conv_routing(request):
    """Route convolutions as on an AVX2 machine, then as where MKL runs AVX-512 (1x1 and
    dense layers on the GEMM), on every machine."""
    with direct.routed_as(request.param):
        yield request.param
