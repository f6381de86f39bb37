"""A full or read-only output disk ends the job at once with a summary (issue 14, case 2):
no chunk is quarantined for the disk's fault, nothing done is lost, and --resume finishes
byte-identical to a clean run once there is room. Uses a real tmpfs of a few pages."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

import taskflow as tf
from taskflow.stream.infer import EXIT_INCOMPLETE
from tests.taskflow.stream.stream_helpers import (
    digits_images,
    digits_model,
    done_markers,
    reference,
    run_cli,
    write_array,
)
from tests.taskflow.stream.test_stream_faults import MODEL

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def scheduler():
    """One cluster for every run of the module (each embedded one costs seconds to start);
    the runs connect to it with --scheduler."""
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as cluster:
        yield ["--scheduler", cluster.client.scheduler.address]


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs (each chunk file takes a 4 KiB page), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _summary(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_a_full_disk_stops_the_job_and_resume_finishes_it(tmp_path, small_disk, scheduler):
    images = digits_images(400)
    src = write_array(tmp_path / "src.zarr", images, 10)               # 40 chunks
    dst = small_disk / "out.zarr"
    args = [MODEL, "-i", src, "-o", str(dst), "--preprocess", '{"scale": "uint8"}',
            "--batch-size", "10", "--progress", "json", *scheduler]
    full = run_cli(*args, timeout=180)
    assert full.returncode == EXIT_INCOMPLETE, full.stdout + full.stderr
    assert "Traceback" not in full.stderr
    summary = _summary(full.stdout)
    assert not summary["ok"] and "No space left" in summary["fatal"]
    assert summary["failed"] == []                  # the disk's fault is no chunk's fault
    done = done_markers(dst)
    assert 0 < done < 40 and summary["chunks_missing"] == 40 - done

    moved = tmp_path / "out.zarr"                   # make room: move the output to a big disk
    subprocess.run(["cp", "-a", str(dst), str(moved)], check=True)
    resumed = run_cli(*[str(moved) if a == str(dst) else a for a in args], "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _summary(resumed.stdout)["ok"]
    (want,) = reference(digits_model(), {"input": images}, 10, {"scale": "uint8"})
    assert zarr.open_group(str(moved), mode="r")["output"][:].tobytes() == want.tobytes()


def test_a_read_only_output_is_one_clear_stop(tmp_path, small_disk, scheduler):
    src = write_array(tmp_path / "src.zarr", digits_images(40), 10)
    dst = small_disk / "out.zarr"
    args = [MODEL, "-i", src, "-o", str(dst), "--preprocess", '{"scale": "uint8"}',
            "--batch-size", "10", *scheduler]
    zarr.open_group(str(dst), mode="w")             # something there, then the disk goes ro
    subprocess.run(["rm", "-rf", str(dst)], check=True)
    first = run_cli(*args, "--progress", "json")
    assert first.returncode == 0, first.stdout + first.stderr
    for k in range(2, 4):                           # two chunks to redo, then read-only
        os.remove(Path(dst) / ".taskflow" / "done" / "c" / str(k))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    again = run_cli(*args, "--resume")
    assert again.returncode == EXIT_INCOMPLETE and "Traceback" not in again.stderr
    assert "cannot be written" in again.stdout and "Read-only file system" in again.stdout
    assert done_markers(dst) == 2 and np.isfinite(
        zarr.open_group(str(dst), mode="r")["output"][:20]).all()
