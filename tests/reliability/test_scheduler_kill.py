"""The Dask scheduler SIGKILLed mid-job (issue 14): ``taskflow run`` exits non-zero with one
clear line and no traceback, and ``--resume`` on a new scheduler and worker finishes the job
byte-identical to a clean run.

The scheduler and the worker are real ``dask scheduler`` / ``dask worker`` processes on
127.0.0.1 (ports picked by the OS, found through a scheduler file), as a user would start them.
:class:`DaskProcesses` is shared with the soak test (``test_soak.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr
from distributed import Client

import taskflow as tf
from taskflow.dask.threads import detect_cores
from taskflow.stream.infer import EXIT_INCOMPLETE
from tests.taskflow.stream.stream_helpers import (
    ROOT,
    cli,
    cli_env,
    digits_images,
    digits_model,
    digits_scale,
    done_markers,
    run_cli,
    write_array,
)
from tests.taskflow.stream.test_stream_faults import HELPERS, MODEL, summary_of, wait_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores"),
]
CHUNKS, BATCH = 40, 10  # ~0.09 s a chunk (the ``slow`` step): ~4 s of work on one thread


def _address(scheduler_file: Path) -> str | None:
    """The address in a scheduler file, once it is there and whole."""
    try:
        return json.loads(scheduler_file.read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


class DaskProcesses:
    """``dask scheduler`` and ``dask worker`` processes, each in its own process group (a
    worker's nanny and worker die together); used as a context manager, every one started is
    killed on the way out."""

    def __init__(self, folder: Path):
        self.folder, self.started, self.n = folder, [], 0

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.folder / log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=out,
                stderr=out,
                env=cli_env(),
                cwd=ROOT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def cluster(self, workers: int = 1) -> tuple[str, subprocess.Popen, list[subprocess.Popen]]:
        """A new scheduler and ``workers`` one-thread workers: ``(address, scheduler,
        workers)``, returned once every worker has registered."""
        self.n += 1
        info = self.folder / f"scheduler-{self.n}.json"
        listen = ["--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
        scheduler = self._spawn(
            ["distributed.cli.dask_scheduler", *listen, "--scheduler-file", str(info)],
            f"scheduler-{self.n}.log",
        )
        wait_for(lambda: _address(info) or scheduler.poll() is not None, what="the scheduler")
        assert scheduler.poll() is None, (self.folder / f"scheduler-{self.n}.log").read_text()
        address = _address(info)
        options = ["--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
        procs = [
            self._spawn(
                ["distributed.cli.dask_worker", address, *options], f"worker-{self.n}-{i}.log"
            )
            for i in range(workers)
        ]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=90)
        return address, scheduler, procs

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL ``proc``'s process group (a worker and its nanny) and reap it."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def __enter__(self) -> DaskProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.started:
            self.kill(proc)


def start_job(args: list[str]) -> subprocess.Popen:
    """``taskflow run ARGS`` in its own process group (a CLI kill takes what it started)."""
    return subprocess.Popen(
        [*cli(), "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
        start_new_session=True,
    )


def clean_run(address: str, source: str, target: Path) -> bytes:
    """The job's output computed alone on the cluster at ``address``, as bytes (the same
    steps as the ``slow`` preprocess without its sleep)."""
    with tf.Cluster(address, quiet=True) as cluster:
        summary = tf.infer_zarr(
            digits_model(),
            source,
            str(target),
            preprocess=digits_scale,
            client=cluster,
            progress="none",
        )
    assert summary.ok, summary
    return zarr.open_group(str(target), mode="r")["output"][:].tobytes()


def test_scheduler_killed_mid_job_then_resumed_on_a_new_one(tmp_path):
    with DaskProcesses(tmp_path) as dask:
        _scheduler_killed_then_resumed(tmp_path, dask)


def _scheduler_killed_then_resumed(tmp_path: Path, dask: DaskProcesses) -> None:
    src = write_array(tmp_path / "src.zarr", digits_images(CHUNKS * BATCH), BATCH)
    dst = tmp_path / "out.zarr"
    address, scheduler, workers = dask.cluster()
    args = [MODEL, "-i", src, "-o", str(dst), "--preprocess", f"{HELPERS}:slow"]
    job = start_job([*args, "--scheduler", address, "--progress", "none"])
    try:
        wait_for(
            lambda: done_markers(dst) >= 4 or job.poll() is not None,
            timeout=120,
            what="4 chunks done",
        )
        os.kill(scheduler.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        stdout, stderr = (s.decode() for s in job.communicate(timeout=60))
    finally:
        DaskProcesses.kill(job)
    exit_s = time.monotonic() - killed_at
    print(
        f"\nthe CLI exited {job.returncode} {exit_s:.2f} s after the scheduler was killed: "
        f"{stderr.strip()}"
    )
    assert job.returncode == EXIT_INCOMPLETE, f"{job.returncode}\n{stdout}\n{stderr}"
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(
        f"taskflow run: error: lost the Dask scheduler at {address!r} mid-job"
    ), stderr
    assert "rerun with --resume" in stderr
    assert exit_s < 20, "the CLI waited out Dask's reconnect instead of stopping"
    for worker in workers:  # it would reconnect forever; the new cluster starts clean
        DaskProcesses.kill(worker)
    before = done_markers(dst)
    assert 4 <= before < CHUNKS, f"{before} chunks done: the scheduler died after the job"

    address, _, _ = dask.cluster()
    resumed = run_cli(*args, "--scheduler", address, "--resume", "--progress", "json", timeout=150)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = summary_of(resumed.stdout)
    assert summary["ok"] and summary["chunks_missing"] == 0 and summary["failed"] == []
    assert summary["chunks_skipped"] >= before
    assert summary["chunks_skipped"] + summary["chunks_done"] == CHUNKS
    assert done_markers(dst) == CHUNKS
    got = zarr.open_group(str(dst), mode="r")["output"][:].tobytes()
    assert got == clean_run(address, src, tmp_path / "clean.zarr")


@pytest.mark.parametrize("logger, message", [
    ("distributed.batched", "Batched Comm Closed %r"),   # a send in flight (seen in CI)
    ("tornado.application", "Exception in callback %r"),  # a result being fetched
    ("distributed.client", "Failed to reconnect to scheduler after 10.00 seconds"),
])
def test_the_lost_scheduler_noise_is_filtered_and_nothing_else(logger, message):
    """``taskflow run`` ends a lost scheduler in one line: the tracebacks Dask's client logs
    meanwhile, from whichever of its loggers, are dropped; other records pass."""
    import logging
    import sys

    from distributed.comm import CommClosedError

    from taskflow.cli import _ConnectionNoise

    _ConnectionNoise.install()
    log = logging.getLogger(logger)
    try:
        raise CommClosedError("in: Stream is closed")
    except CommClosedError:
        closed = log.makeRecord(logger, logging.INFO, __file__, 1, message, ("x",),
                                sys.exc_info())
    other = log.makeRecord(logger, logging.WARNING, __file__, 1, "a worker is slow", (), None)
    assert not all(f.filter(closed) for f in log.filters)
    assert all(f.filter(other) for f in log.filters)
