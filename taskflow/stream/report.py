"""Progress, name and summary of an :func:`taskflow.infer_zarr` job.

Progress goes to stderr (``bar``): a tqdm bar where stderr is a terminal, plain periodic lines
where it is not (a log file, a pipe: no carriage returns); or one JSON object per update on
stdout (``json``), nothing (``none``), or a callable given each update as a dict. Rate and ETA
leave out the job's warm-up (:class:`Progress`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, TextIO

#: Seconds between two progress updates: often enough to look alive, rarely enough that a job
#: of many tiny chunks does not spend its time printing.
PROGRESS_INTERVAL = 0.5
#: Where stderr is not a terminal, a plain line at least this often, and one each time the job
#: passes another PLAIN_STEP of its chunks: a log of an hour-long job stays a few hundred lines,
#: and a short job still shows its 10 %, 20 %, ... steps.
PLAIN_INTERVAL_S = 10.0
PLAIN_STEP = 0.1
#: Seconds of recent progress the rate (and so the ETA) is averaged over: long enough to smooth
#: tasks finishing in bursts (a window of them starts together), short enough to follow a
#: cluster that grows or slows down.
RATE_WINDOW_S = 30.0
#: The shortest span of steady progress a rate is measured over; no ETA before it.
MIN_RATE_SPAN_S = 1.0
#: tqdm's line: our own rate and ETA go in the postfix (tqdm's would count the warm-up).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} chunks [{elapsed}{postfix}]"


def job_name(model: Any, when: float | None = None) -> str:
    """A job's default name: the model's file stem or name, then the local start time.

    ``model`` is a path or URL (its stem), anything with a string ``name`` (a pipeline), or
    anything with a ``graph.name`` (a :class:`taskflow.Model`); ``job`` otherwise.

    Parameters
    ----------
    model : path, Model or named object
        What the job runs.
    when : float, optional
        The start time, epoch seconds (default: now).

    Returns
    -------
    str
        ``<stem>-<YYYYmmdd>-<HHMM>``.

    Examples
    --------
    >>> import time
    >>> from types import SimpleNamespace
    >>> from taskflow.stream.report import job_name
    >>> when = time.mktime((2026, 12, 5, 22, 14, 0, 0, 0, -1))
    >>> job_name("models/squeezenet.onnx", when)
    'squeezenet-20261205-2214'
    >>> job_name(SimpleNamespace(graph=SimpleNamespace(name="digits_cnn")), when)
    'digits_cnn-20261205-2214'
    """
    if isinstance(model, str | os.PathLike):
        base: Any = PurePosixPath(os.fspath(model).replace("\\", "/")).stem
    else:
        base = getattr(model, "name", None)
        if not isinstance(base, str) or not base.strip():
            base = getattr(getattr(model, "graph", None), "name", None)
    if not isinstance(base, str) or not base.strip():
        base = "job"
    stamp = time.strftime("%Y%m%d-%H%M", time.localtime(time.time() if when is None else when))
    return "-".join(base.split()) + "-" + stamp


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
    name : str or None
        The job's name (``infer_zarr(name=...)``, ``taskflow run --name``; default the model's
        name and the start time, :func:`job_name`), as on the dashboard.
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
    >>> print(JobSummary("logits.zarr", 4, 4, 0, samples=256, seconds=1.0, tasks=2,
    ...                  name="digits-20261205-2214"))
    taskflow run digits-20261205-2214: 256 samples in 4 chunks (0 already done, 4 in all) in
    1.00 s, 256 samples/s; 0 failed; 2 tasks
    output logits.zarr
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
    name: str | None = None

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
        named = f" {self.name}" if self.name else ""
        lines = [f"taskflow run{named}: {self.samples:,} samples in {self.chunks_done} chunks "
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
    """Reports a job's ``done/total`` chunks, percent, samples/s and ETA in the chosen ``mode``.

    The rate leaves out the warm-up: it is measured from the moment the job's first round of
    tasks (one chunk per worker thread, ``info["threads"]`` of :meth:`start`) has finished,
    which paid for shipping the model, compiling kernels and filling caches, over the last
    ``RATE_WINDOW_S`` seconds. Until ``MIN_RATE_SPAN_S`` of such steady progress there is no
    ETA (``eta_s`` None, ``ETA ?``); ``samples_per_s`` is the average since the start until
    then. A resumed job starts at the chunks done before it (``already``).

    Parameters
    ----------
    mode : {"bar", "json", "none"} or callable
        ``bar``: on stderr, a tqdm bar where it is a terminal, else a plain line every
        ``PLAIN_INTERVAL_S`` seconds and every ``PLAIN_STEP`` of the chunks; ``json``: one
        object per update on stdout; ``none``; or ``fn(update: dict)``.
    total, already, todo : int
        Chunks of the target in all, done before this run, and to compute now.
    name : str, optional
        The job's name, the bar's label.
    clock : callable
        Seconds, monotonic (tests pass their own).

    Examples
    --------
    >>> from taskflow.stream.report import Progress
    >>> updates, now = [], [0.0]
    >>> progress = Progress(updates.append, total=10, already=0, todo=10, clock=lambda: now[0])
    >>> progress.start({"threads": 1})
    >>> for t, done in [(8.0, 1), (9.0, 2), (10.0, 3), (11.0, 4)]:  # the first chunk: 8 s
    ...     now[0] = t
    ...     progress.update(done, failed=0, samples=32 * done)
    >>> [u["eta_s"] for u in updates]  # 1 chunk/s once warm: not 11 s / 4 chunks x 6 = 16.5 s
    [None, 8.0, 7.0, 6.0]
    >>> updates[-1]["percent"], updates[-1]["samples_per_s"]
    (40.0, 32.0)
    """

    def __init__(self, mode: str | Callable[[dict], None], total: int, already: int,
                 todo: int, name: str | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if not callable(mode) and mode not in ("bar", "json", "none"):
            raise ValueError(f"progress={mode!r}; expected 'bar', 'json', 'none' or a callable")
        self.mode, self.total, self.already, self.todo = mode, total, already, todo
        self.name, self.clock = name, clock
        self.t0 = clock()
        self.last = 0.0
        self.seen: tuple[int, int] | None = None
        self.state: dict[str, Any] = {}
        self.warmup = 1  # chunks that finish the first round (set by start)
        self.points: deque[tuple[float, int, int]] = deque()  # (t, finished, samples) warm
        self.bar: Any = None  # the tqdm bar, on a terminal
        self.stream: TextIO | None = None  # plain lines: stderr when it is not a terminal
        self.printed: tuple[float, int] = (-float("inf"), -1)  # last plain line: (t, step)

    def start(self, info: dict[str, Any]) -> None:
        """The job's parameters: a JSON ``start`` event; for ``bar``, the bar or a first line."""
        self.t0 = self.clock()
        self.warmup = max(1, min(int(info.get("threads") or 1), self.todo))
        if self.mode == "json":
            print(json.dumps({"event": "start", **info}), flush=True)
        elif self.mode == "bar":
            stream = sys.stderr
            if _is_terminal(stream):
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=self.already, file=stream,
                                desc=f"taskflow {self.name}" if self.name else "taskflow",
                                bar_format=BAR_FORMAT, dynamic_ncols=True, leave=True,
                                mininterval=PROGRESS_INTERVAL)
            else:
                self.stream = stream
                self._line(self.t0, self.already, 0, 0, None, None)

    def update(self, done: int, failed: int, samples: int, force: bool = False) -> None:
        """This run's ``done`` and ``failed`` (quarantined) chunks and ``samples`` so far."""
        now = self.clock()
        finished = done + failed
        self._observe(now, finished, samples)
        left = self.todo - finished
        if self.mode == "none" or (not force and now - self.last < PROGRESS_INTERVAL and left) \
                or (force and self.seen == (done, failed)):
            return
        self.last, self.seen = now, (done, failed)
        elapsed = now - self.t0
        steady = self._rates()
        if steady is not None:
            chunk_rate, rate = steady
            eta = left / chunk_rate if left else 0.0
        else:
            rate = samples / elapsed if elapsed > 0 else 0.0
            eta = None if left else 0.0
        n = self.already + done
        self.state = {"event": "progress", "chunks_done": n, "chunks_total": self.total,
                      "percent": round(100 * n / self.total, 1) if self.total else 100.0,
                      "failed": failed, "samples": samples, "samples_per_s": round(rate, 1),
                      "eta_s": None if eta is None else round(eta, 1),
                      "elapsed_s": round(elapsed, 2), "name": self.name}
        if callable(self.mode):
            self.mode(dict(self.state))
        elif self.mode == "json":
            print(json.dumps(self.state), flush=True)
        elif self.bar is not None:
            self.bar.n = n
            self.bar.set_postfix_str(_rest(failed, rate, eta), refresh=False)
            self.bar.refresh()
        elif self.stream is not None:
            step = int(n / self.total / PLAIN_STEP) if self.total else 0
            if not left or step > self.printed[1] or now - self.printed[0] >= PLAIN_INTERVAL_S:
                self._line(now, n, failed, samples, rate, eta)

    def close(self) -> None:
        """End the bar (its last state stays on the terminal)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _observe(self, now: float, finished: int, samples: int) -> None:
        """Keep the points the steady rate is measured over: the first once the first round
        is done (the warm-up mark), then those of the last RATE_WINDOW_S, plus one before."""
        if not self.points and finished < self.warmup:
            return
        self.points.append((now, finished, samples))
        while len(self.points) > 2 and self.points[1][0] <= now - RATE_WINDOW_S:
            self.points.popleft()

    def _rates(self) -> tuple[float, float] | None:
        """Steady (chunks/s, samples/s), or None during the warm-up."""
        if len(self.points) < 2:
            return None
        (t0, f0, s0), (t1, f1, s1) = self.points[0], self.points[-1]
        if t1 - t0 < MIN_RATE_SPAN_S or f1 <= f0:
            return None
        return (f1 - f0) / (t1 - t0), (s1 - s0) / (t1 - t0)

    def _line(self, now: float, n: int, failed: int, samples: int, rate: float | None,
              eta: float | None) -> None:
        assert self.stream is not None
        percent = 100 * n / self.total if self.total else 100.0
        self.stream.write(f"taskflow{' ' + self.name if self.name else ''}: {percent:3.0f}% "
                          f"{n}/{self.total} chunks, {samples:,} samples, "
                          f"{_rest(failed, rate, eta)}\n")
        self.stream.flush()
        self.printed = (now, int(n / self.total / PLAIN_STEP) if self.total else 0)


def _rest(failed: int, rate: float | None, eta: float | None) -> str:
    return ((f"{failed} failed, " if failed else "")
            + ("" if rate is None else f"{rate:,.0f} samples/s, ")
            + "ETA " + ("?" if eta is None else _clock(eta)))


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
