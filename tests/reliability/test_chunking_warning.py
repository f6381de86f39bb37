"""A Zarr source chunked against the batch is named, in one warning (issue 14, item 7).

Without ``batch_size`` a task covers the source's chunk along axis 0: a first chunk that holds
every row while another axis is chunked, or one past ``LARGE_TASK_BYTES``, makes one task of the
whole dataset. With ``batch_size``, a source chunked along a non-batch axis splits every task's
reads. The job still runs; the command line shows the warning as one line.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

import taskflow as tf
from taskflow import cli
from taskflow.stream import sources
from tests.taskflow.stream.stream_helpers import (
    ROOT,
    digits_images,
    digits_model,
    reference,
    write_array,
)

MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")
SCALE = {"scale": "uint8"}


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=1, threads_per_worker=1, processes=False, quiet=True) as c:
        yield c


def split_source(path, images: np.ndarray) -> str:
    """``images`` (N, 1, 8, 8) stored whole along the batch, halved along axis 2."""
    arr = zarr.open_array(
        str(path),
        mode="w",
        shape=images.shape,
        chunks=(len(images), 1, 4, 8),
        dtype=images.dtype,
    )
    arr[:] = images
    return str(path)


def source_warnings(record) -> list[str]:
    return [str(w.message) for w in record if str(w.message).startswith("source ")]


def test_a_whole_first_chunk_with_a_split_axis_warns_that_one_task_takes_every_row(
    tmp_path, cluster
):
    images = digits_images(64)
    src = split_source(tmp_path / "x.zarr", images)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        summary = tf.infer_zarr(
            MODEL, src, tmp_path / "y.zarr", preprocess=SCALE, client=cluster, progress="none"
        )
    (message,) = source_warnings(record)
    assert message.startswith(
        f"source {src!r} has shape (64, 1, 8, 8) and chunks (64, 1, 4, 8): its first chunk "
        "holds all 64 rows while axis 2 is chunked"
    )
    assert "each task reads and runs 64 rows at once (4.00 kiB of input per task" in message
    assert "one task for the whole job" in message
    assert message.endswith("pass batch_size (--batch-size), or rechunk the source along axis 0")
    assert summary.ok and summary.chunks_total == 1  # it still runs, as one task


def test_a_first_chunk_past_the_task_size_limit_warns(tmp_path, cluster, monkeypatch):
    monkeypatch.setattr(sources, "LARGE_TASK_BYTES", 1024)  # a 64-row chunk is 4 kiB
    src = write_array(tmp_path / "x.zarr", digits_images(128), 64)
    with pytest.warns(UserWarning, match=r"its chunks hold 64 rows each") as record:
        summary = tf.infer_zarr(
            MODEL, src, tmp_path / "y.zarr", preprocess=SCALE, client=cluster, progress="none"
        )
    (message,) = source_warnings(record)
    assert "(4.00 kiB of input per task)" in message and "whole job" not in message
    assert summary.ok and summary.chunks_total == 2


def test_a_batch_size_over_a_source_split_across_rows_warns_about_split_reads(tmp_path, cluster):
    images = digits_images(64)
    src = split_source(tmp_path / "x.zarr", images)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        summary = tf.infer_zarr(
            MODEL,
            src,
            tmp_path / "y.zarr",
            batch_size=16,
            preprocess=SCALE,
            client=cluster,
            progress="none",
        )
    (message,) = source_warnings(record)
    assert "it is chunked along axis 2 as well as the batch" in message
    assert "every task reads its rows as 2 pieces side by side" in message
    assert message.endswith("rechunk it along axis 0 only, e.g. chunks (16, 1, 8, 8)")
    assert summary.ok and summary.chunks_total == 4
    got = zarr.open_group(str(tmp_path / "y.zarr"), mode="r")["output"][:]
    (want,) = reference(digits_model(), {"input": images}, 16, SCALE)
    np.testing.assert_array_equal(got, want)


def test_taskflow_run_shows_the_warning_as_one_line(tmp_path, cluster, capsys):
    src = split_source(tmp_path / "x.zarr", digits_images(32))
    code = cli.main(
        [
            "run",
            MODEL,
            "-i",
            src,
            "-o",
            str(tmp_path / "y.zarr"),
            "--preprocess",
            '{"scale": "uint8"}',
            "--progress",
            "none",
            "--scheduler",
            cluster.client.scheduler.address,
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"taskflow run: warning: source {src!r} has shape (32, 1, 8, 8)")
    assert "UserWarning" not in err and "warnings.warn" not in err
