"""One real LocalCluster per test module: 2 workers x 1 thread where 2 cores are usable."""

from __future__ import annotations

import pytest

import taskflow as tf
from taskflow.dask.threads import detect_cores


@pytest.fixture(scope="module")
def cluster():
    workers = max(1, min(2, detect_cores().cores))
    with tf.Cluster(n_workers=workers, threads_per_worker=1, quiet=True) as c:
        yield c
