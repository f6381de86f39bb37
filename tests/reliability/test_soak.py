"""Soak: kill and resume, over and over, on a larger dataset (issue 14). Off by default.

Each cycle streams the whole digits set (1,797 rows: 180 chunks, the last one ragged) through
``taskflow run`` on a real ``dask scheduler`` with two ``dask worker`` processes, SIGKILLs one
thing mid-job, in turn:

- a worker (its nanny restarts it; the job must finish by itself),
- the ``taskflow run`` process (its process group), or
- the scheduler (the CLI must exit 4 with one line; a new scheduler and workers are started),

then runs ``--resume`` and checks that the job is complete and its output byte-identical to a
clean run. The kill point is drawn at random (seeded per cycle, printed) among the chunks.

Environment:

``TASKFLOW_SOAK=N``
    Run up to N cycles (unset or empty: the test is skipped).
``TASKFLOW_SOAK_SECONDS=S``
    Start no cycle after S seconds (default 600); the test's timeout is S + 300 s.

Example: ``TASKFLOW_SOAK=30 TASKFLOW_SOAK_SECONDS=1200 python -m pytest -s
tests/reliability/test_soak.py``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client

from taskflow.dask.threads import detect_cores
from taskflow.stream.infer import EXIT_INCOMPLETE
from tests.reliability.test_scheduler_kill import DaskProcesses, clean_run, start_job
from tests.taskflow.stream.stream_helpers import (
    digits_images,
    done_markers,
    run_cli,
    write_array,
)
from tests.taskflow.stream.test_stream_faults import HELPERS, MODEL, summary_of, wait_for

CYCLES_RAW = os.environ.get("TASKFLOW_SOAK", "").strip()
SECONDS_RAW = os.environ.get("TASKFLOW_SOAK_SECONDS", "").strip()
#: Default time bound: a cycle took 35-40 s on a shared 2-core machine, so about fifteen.
DEFAULT_SECONDS = 600.0
KINDS = ("worker", "cli", "scheduler")
BATCH = 10


def _seconds() -> float | None:
    """``TASKFLOW_SOAK_SECONDS`` (``DEFAULT_SECONDS`` when unset); None when not a number > 0."""
    if not SECONDS_RAW:
        return DEFAULT_SECONDS
    try:
        value = float(SECONDS_RAW)
    except ValueError:
        return None
    return value if value > 0 else None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout((_seconds() or DEFAULT_SECONDS) + 300),
    pytest.mark.skipif(
        not CYCLES_RAW,
        reason="soak test: set TASKFLOW_SOAK=N (cycles) and "
        "TASKFLOW_SOAK_SECONDS=S (time bound, default 600) to run it",
    ),
    pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores"),
]


def _settings() -> tuple[int, float]:
    try:
        cycles = int(CYCLES_RAW)
    except ValueError:
        cycles = 0
    if cycles < 1:
        pytest.fail(
            f"TASKFLOW_SOAK={CYCLES_RAW!r}: expected a number of cycles >= 1 "
            "(e.g. TASKFLOW_SOAK=6), or unset to skip the soak test"
        )
    seconds = _seconds()
    if seconds is None:
        pytest.fail(
            f"TASKFLOW_SOAK_SECONDS={SECONDS_RAW!r}: expected seconds > 0 (e.g. "
            "TASKFLOW_SOAK_SECONDS=1200)"
        )
    return cycles, seconds


def _kill_a_worker(address: str) -> int:
    """SIGKILL one worker process (not its nanny, which starts a new one); its pid."""
    with Client(address, timeout=30) as client:
        pid = min(client.run(os.getpid).values())
    os.kill(pid, signal.SIGKILL)
    return pid


def test_soak_kill_and_resume_cycles(tmp_path):
    cycles, seconds = _settings()
    with DaskProcesses(tmp_path) as dask:
        _soak(tmp_path, dask, cycles, seconds)


def _soak(tmp_path: Path, dask: DaskProcesses, cycles: int, seconds: float) -> None:
    images = digits_images()
    src = write_array(tmp_path / "src.zarr", images, BATCH)
    cluster = dask.cluster(workers=2)
    want = clean_run(cluster[0], src, tmp_path / "clean.zarr")
    started, ran = time.monotonic(), 0
    for cycle in range(cycles):
        if ran and time.monotonic() - started > seconds:
            break
        t0 = time.monotonic()
        cluster, line = _cycle(cycle, tmp_path, dask, cluster, src, -(-len(images) // BATCH), want)
        ran += 1
        print(f"\nsoak cycle {cycle}: {line}; {time.monotonic() - t0:.1f} s")
    print(f"soak: {ran} cycle(s) in {time.monotonic() - started:.0f} s")


def _cycle(
    cycle: int,
    tmp_path: Path,
    dask: DaskProcesses,
    cluster: tuple,
    src: str,
    chunks: int,
    want: bytes,
) -> tuple[tuple, str]:
    """One kill and resume; the cluster to go on with (new after a scheduler kill) and a line
    saying what happened."""
    address, scheduler, workers = cluster
    kind = KINDS[cycle % len(KINDS)]
    at = int(np.random.default_rng(cycle).integers(5, chunks * 2 // 3))
    dst = tmp_path / f"cycle-{cycle}.zarr"
    args = [MODEL, "-i", src, "-o", str(dst), "--preprocess", f"{HELPERS}:slow"]
    job = start_job([*args, "--scheduler", address, "--progress", "none"])
    try:
        wait_for(
            lambda: done_markers(dst) >= at or job.poll() is not None,
            timeout=240,
            what=f"{at} chunks done",
        )
        assert job.poll() is None, f"cycle {cycle}: the job ended before the kill"
        if kind == "worker":
            _kill_a_worker(address)
        elif kind == "cli":
            os.killpg(job.pid, signal.SIGKILL)
        else:
            os.kill(scheduler.pid, signal.SIGKILL)
        stdout, stderr = (s.decode() for s in job.communicate(timeout=240))
    finally:
        DaskProcesses.kill(job)
    before = done_markers(dst)
    if kind == "worker":  # Dask reruns the lost tasks: the job finishes on its own
        assert job.returncode == 0, f"cycle {cycle}\n{stdout}\n{stderr}"
    elif kind == "cli":
        assert job.returncode == -signal.SIGKILL
    else:
        assert job.returncode == EXIT_INCOMPLETE, f"cycle {cycle}\n{stdout}\n{stderr}"
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
        for worker in workers:
            DaskProcesses.kill(worker)
        cluster = dask.cluster(workers=2)
    resumed = run_cli(
        *args, "--scheduler", cluster[0], "--resume", "--progress", "json", timeout=240
    )
    assert resumed.returncode == 0, f"cycle {cycle}\n{resumed.stdout}\n{resumed.stderr}"
    summary = summary_of(resumed.stdout)
    assert summary["ok"] and summary["chunks_missing"] == 0 and summary["failed"] == []
    assert summary["chunks_skipped"] + summary["chunks_done"] == chunks
    assert summary["chunks_skipped"] >= before and done_markers(dst) == chunks
    got = zarr.open_group(str(dst), mode="r")["output"][:].tobytes()
    assert got == want, f"cycle {cycle} ({kind} killed): output differs from a clean run"
    return cluster, (
        f"{kind} killed after {at} chunks ({before} done, exit {job.returncode}); "
        f"--resume computed {summary['chunks_done']}; output identical"
    )
