"""Progress and summary of an :func:`taskflow.infer_zarr` job.

Progress is one quiet line on stderr rewritten in place (``bar``), one JSON object per update
on stdout (``json``), nothing (``none``), or a callable given each update as a dict.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Seconds between two progress updates: often enough to look alive, rarely enough that a job
#: of many tiny chunks does not spend its time printing.
PROGRESS_INTERVAL = 0.5


@dataclass(frozen=True)
class FailedChunk:
    """A quarantined chunk: index, rows ``[start, stop)`` and the last error.

    Examples
    --------
    >>> from taskflow.stream.report import FailedChunk
    >>> print(FailedChunk(7, 448, 512, "ValueError: NaN in input"))
    chunk 7 (rows 448..511): ValueError: NaN in input
    """

    chunk: int
    start: int
    stop: int
    error: str

    def __str__(self) -> str:
        return f"chunk {self.chunk} (rows {self.start}..{self.stop - 1}): {self.error}"


@dataclass
class JobSummary:
    """What an :func:`~taskflow.infer_zarr` job did.

    ``chunks_done`` and ``samples`` count this run; ``chunks_skipped`` were done before (resume);
    ``failed`` lists every chunk quarantined in the target now (rerun with ``rerun_failed``).
    ``str(summary)`` is what ``taskflow run`` prints at the end.

    Attributes
    ----------
    target : str
        The output Zarr group.
    chunks_total, chunks_done, chunks_skipped : int
        Output chunks in all, computed by this run, and done before it.
    samples : int
        Rows computed by this run.
    seconds : float
        Wall time of the run.
    failed : list of FailedChunk
        Chunks quarantined in the target.
    dashboard_link : str or None
        The ``/taskflow`` dashboard page of the cluster that ran the job.
    window, max_in_flight : int
        Tasks allowed in flight, and the most that were.
    retried : int
        Chunk attempts that were retries.
    task_seconds : dict of str to float
        Seconds the tasks spent reading, computing and writing, summed over this run's chunks.
    tasks : int
        Tasks submitted (consecutive chunks are grouped into one task).
    ok : bool
        Every chunk of the target is done (property).
    samples_per_s : float
        ``samples / seconds`` (property).

    Examples
    --------
    >>> import taskflow as tf                                           # doctest: +SKIP
    >>> summary = tf.infer_zarr(model, "images.zarr", "logits.zarr")    # doctest: +SKIP
    >>> if not summary.ok:                                              # doctest: +SKIP
    ...     for chunk in summary.failed:
    ...         print(chunk)
    ...     tf.infer_zarr(model, "images.zarr", "logits.zarr", rerun_failed=True)

    >>> from taskflow.stream import JobSummary
    >>> s = JobSummary("logits.zarr", chunks_total=10, chunks_done=6, chunks_skipped=4,
    ...                samples=384, seconds=1.5)
    >>> s.ok, s.samples_per_s
    (True, 256.0)
    """

    target: str
    chunks_total: int
    chunks_done: int
    chunks_skipped: int
    samples: int
    seconds: float
    failed: list[FailedChunk] = field(default_factory=list)
    dashboard_link: str | None = None
    window: int = 0
    max_in_flight: int = 0
    retried: int = 0
    #: Seconds the tasks spent reading (and opening), computing (preprocess + model) and
    #: writing (outputs + marker), summed over this run's chunks.
    task_seconds: dict[str, float] = field(default_factory=dict)
    tasks: int = 0
    #: Why the job stopped early, when the target could not be written (full, read-only).
    fatal: str | None = None
    #: Where the quarantine list went when the target's manifest could not take it.
    unrecorded: str | None = None

    @property
    def ok(self) -> bool:
        """Every chunk of the target is done."""
        return (not self.failed and not self.fatal
                and self.chunks_done + self.chunks_skipped == self.chunks_total)

    @property
    def chunks_missing(self) -> int:
        """Chunks neither done nor quarantined: a killed job never finished them, and this
        run did not compute them (``resume=True`` does)."""
        return max(self.chunks_total - self.chunks_done - self.chunks_skipped
                   - len(self.failed), 0)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-able data, ``ok`` and ``samples_per_s`` included.

        ``taskflow run --progress json`` prints this as its last line.

        Examples
        --------
        >>> from taskflow.stream import JobSummary
        >>> d = JobSummary("logits.zarr", 10, 10, 0, samples=640, seconds=2.0).to_dict()
        >>> d["event"], d["ok"], d["samples_per_s"]
        ('summary', True, 320.0)
        """
        d = asdict(self)
        d.update(event="summary", ok=self.ok, chunks_missing=self.chunks_missing,
                 samples_per_s=round(self.samples_per_s, 1),
                 seconds=round(self.seconds, 3))
        return d

    def __str__(self) -> str:
        lines = [f"taskflow run: {self.samples:,} samples in {self.chunks_done} chunks "
                 f"({self.chunks_skipped} already done, {self.chunks_total} in all) in "
                 f"{self.seconds:.2f} s, {self.samples_per_s:,.0f} samples/s; "
                 f"{len(self.failed)} failed"
                 + (f" ({self.retried} retries)" if self.retried else "")
                 + f"; {self.tasks} tasks"]
        lines.append(f"output {self.target}"
                     + (f"; dashboard {self.dashboard_link}" if self.dashboard_link else ""))
        if self.failed:
            lines.append(f"{len(self.failed)} chunk(s) quarantined; fix the cause, then rerun "
                         "with --rerun-failed (rerun_failed=True):")
            lines += [f"  {f}" for f in self.failed]
        if self.fatal:
            lines.append(f"stopped early: the output cannot be written ({self.fatal}); free "
                         "space or fix its permissions, then rerun with --resume")
        if self.unrecorded:
            lines.append(f"the quarantine list could not be written into the output; it is in "
                         f"{self.unrecorded}")
        if self.chunks_missing:
            lines.append(f"{self.chunks_missing} chunk(s) are neither done nor quarantined (an "
                         "earlier run was interrupted): rerun with --resume (resume=True)")
        return "\n".join(lines)


class Progress:
    """Reports ``done/total`` chunks, samples/s and ETA in the chosen ``mode``."""

    def __init__(self, mode: str | Callable[[dict], None], total: int, already: int,
                 todo: int):
        if not callable(mode) and mode not in ("bar", "json", "none"):
            raise ValueError(f"progress={mode!r}; expected 'bar', 'json', 'none' or a callable")
        self.mode, self.total, self.already, self.todo = mode, total, already, todo
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.width = 0
        self.seen: tuple[int, int] | None = None
        self.state: dict[str, Any] = {}

    def start(self, info: dict[str, Any]) -> None:
        """The job's parameters: a JSON ``start`` event; nothing more for ``bar``, whose one
        line is the progress itself (the dashboard link comes with the summary)."""
        self.t0 = time.perf_counter()
        if self.mode == "json":
            print(json.dumps({"event": "start", **info}), flush=True)

    def update(self, done: int, failed: int, samples: int, force: bool = False) -> None:
        now = time.perf_counter()
        left = self.todo - done - failed
        if self.mode == "none" or (not force and now - self.last < PROGRESS_INTERVAL and left) \
                or (force and self.seen == (done, failed)):
            return
        self.last, self.seen = now, (done, failed)
        elapsed = now - self.t0
        rate = samples / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * left if done else None
        self.state = {"event": "progress", "chunks_done": self.already + done,
                      "chunks_total": self.total, "failed": failed, "samples": samples,
                      "samples_per_s": round(rate, 1),
                      "eta_s": None if eta is None else round(eta, 1),
                      "elapsed_s": round(elapsed, 2)}
        if callable(self.mode):
            self.mode(dict(self.state))
        elif self.mode == "json":
            print(json.dumps(self.state), flush=True)
        else:
            text = (f"taskflow: {self.already + done}/{self.total} chunks"
                    + (f" ({failed} failed)" if failed else "")
                    + f"  {samples:,} samples  {rate:,.0f} samples/s  ETA "
                    + ("?" if eta is None else _clock(eta)))
            pad = max(0, self.width - len(text))
            self.width = len(text)
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()

    def close(self) -> None:
        if self.mode == "bar" and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.width = 0


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
