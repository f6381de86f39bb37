"""Fixtures the op and kernel tests share."""

from __future__ import annotations

import pytest

from taskflow.dask import threads


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def kernel_threads(request):
    """Run the test with 1, then 2 kernel threads (the kernels split work by thread count)."""
    threads.apply_kernel_threads(request.param)
    yield request.param
    threads.reset_kernel_threads()
