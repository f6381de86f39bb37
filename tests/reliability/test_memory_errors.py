"""Workers that die for memory are named as such (issue 14, item 7).

A chunk too big for its worker's memory limit: ``infer_zarr`` quarantines it, without extra
retries, with a message naming memory, the workers' limit, about what a chunk needs and the
``batch_size`` that fits; ``Model.predict`` computed inside a ``taskflow.Cluster`` block raises a
:class:`~taskflow.errors.WorkerDiedError` saying the same with ``chunk_size``. A worker too small
for taskflow itself dies importing it: ``taskflow run`` says so in one line, exit code 2.

Real process clusters whose nannies stop a worker at 95% of its memory limit. The scheduler
gives up on a task after its first worker death (``allowed-failures: 0``): the message is the
same after more, and each death costs a worker restart of several seconds.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import onnx
import pytest
from distributed import Client, LocalCluster
from onnx import TensorProto, helper, numpy_helper

import taskflow as tf
from taskflow.dask.memory import WORKER_BASE_BYTES
from tests.taskflow.stream.stream_helpers import (
    ROOT,
    digits_images,
    done_markers,
    run_cli,
    write_array,
)

MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")
WIDTH, FAN = 16, 8192  # each row becomes (WIDTH, FAN) float32: 512 KiB of activations
ROWS = 2048  # one chunk of 2048 rows: 1 GiB of activations, for a worker of 400 MB


def expanding_model() -> tf.Model:
    """``y = ReduceSum(Expand(x[:, :, None], (1, 1, FAN)), axis 2)``: small in, small out, and
    FAN copies of every input value in between."""
    consts = [
        numpy_helper.from_array(np.array([1, 1, FAN], np.int64), "fan"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
        helper.make_node("Expand", ["u", "fan"], ["e"]),
        helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "expanding",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return tf.load(model)


@pytest.fixture(scope="module")
def small_worker():
    """One worker process limited to 400 MB: taskflow fits, a chunk of ROWS rows does not."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit="400MB",
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster:
            with Client(cluster) as client:
                yield client


def test_a_chunk_too_big_for_its_worker_is_quarantined_naming_memory(tmp_path, small_worker):
    client = small_worker
    src = write_array(tmp_path / "x.zarr", np.ones((ROWS, WIDTH), np.float32), ROWS)
    summary = tf.infer_zarr(
        expanding_model(), src, tmp_path / "y.zarr", client=client, progress="none"
    )
    assert not summary.ok and [f.chunk for f in summary.failed] == [0]
    assert summary.retried == 0  # Dask already ran it on every worker it was allowed to kill
    error = summary.failed[0].error
    assert error.startswith("KilledWorker: the 1 worker(s) that ran its task died")
    assert "out of memory" in error
    assert "memory limit 381.47 MiB" in error  # 400 MB, as Dask shows it
    assert f"a chunk of {ROWS} rows needs about 1.22 GiB" in error
    assert "512.06 kiB of activations a row" in error
    assert "batch_size=128 (--batch-size 128) would fit" in error
    assert done_markers(tmp_path / "y.zarr") == 0
    client.wait_for_workers(1, timeout=60)  # the nanny restarts it for the next test


def test_predict_in_a_cluster_block_raises_worker_died_naming_memory(small_worker):
    model = expanding_model()
    x = da.ones((ROWS, WIDTH), chunks=(ROWS, WIDTH), dtype=np.float32)
    small_worker.wait_for_workers(1, timeout=60)
    address = small_worker.scheduler.address
    with pytest.raises(tf.WorkerDiedError) as info:
        with tf.Cluster(address, quiet=True):
            model.predict(x).compute()
    message = str(info.value)
    assert message.startswith("the 1 worker(s) that ran Model.predict's task ")
    assert "died (the last, tcp://" in message and "out of memory" in message
    assert "memory limit 381.47 MiB on each of 1 worker(s)" in message
    assert f"a chunk of {ROWS} rows needs about 1.22 GiB" in message
    assert "chunk_size=128 would fit" in message
    assert type(info.value.__cause__).__name__ == "KilledWorker"


def test_a_worker_too_small_for_taskflow_fails_taskflow_run_in_one_line(tmp_path):
    src = write_array(tmp_path / "src.zarr", digits_images(32), 16)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        memory_limit="150MB",  # a bare worker is ~63 MiB; importing taskflow passes 143
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    ) as cluster:
        result = run_cli(
            MODEL,
            "-i",
            src,
            "-o",
            str(tmp_path / "out.zarr"),
            "--preprocess",
            '{"scale": "uint8"}',
            "--progress",
            "none",
            "--scheduler",
            cluster.scheduler_address,
        )
        with Client(cluster) as client:  # no taskflow plugin left to kill each new worker
            names = client.run_on_scheduler(
                lambda dask_scheduler: list(dask_scheduler.worker_plugins)
            )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("taskflow run: error: worker(s) died while taskflow was ")
    assert "143.05 MiB memory limit" in line and "out of memory" in line  # 150 MB, as Dask has it
    assert f"needs about {WORKER_BASE_BYTES >> 20}.00 MiB" in line
    assert "give each worker at least 512.00 MiB" in line and "--memory-limit" in line
    assert not [n for n in names if n.startswith("taskflow")], names
