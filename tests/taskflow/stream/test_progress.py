"""``Progress`` (taskflow/stream/report.py) on a clock the tests drive: the ETA leaves out the
warm-up, plain newline-terminated lines where stderr is not a terminal, a tqdm bar where it is,
a resumed job starting at the chunks done before; ``json``, ``none`` and callables as before.
The same output from a real ``taskflow run`` is in test_job_names.py."""

from __future__ import annotations

import io
import json
import re
import time
from types import SimpleNamespace

import pytest

from taskflow.stream import report
from taskflow.stream.report import JobSummary, Progress, job_name

LINE = re.compile(r"^taskflow digits-x: +(\d+)% (\d+)/(\d+) chunks, [\d,]+ samples, "
                  r"(?:\d+ failed, )?(?:[\d,]+ samples/s, )?ETA (\?|\d+:\d\d)$")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(progress: Progress, clock: Clock, times: list[float], samples_per_chunk: int = 8,
          failed_at: int | None = None) -> None:
    """Chunk k of this run finishes at ``times[k]``."""
    failed = 0
    for k, t in enumerate(times):
        clock.now = t
        failed += k == failed_at
        progress.update(k + 1 - failed, failed, samples_per_chunk * (k + 1 - failed))
    progress.update(len(times) - failed, failed, samples_per_chunk * (len(times) - failed),
                    force=True)
    progress.close()


def test_eta_leaves_out_a_slow_first_round():
    """Two threads; each first chunk takes 20 s (model shipped, kernels compiled), then each
    thread finishes a chunk a second: 2 chunks/s. 100 chunks."""
    clock, updates = Clock(), []
    progress = Progress(updates.append, total=100, already=0, todo=100, clock=clock)
    progress.start({"threads": 2})
    times = [20.0, 20.05] + [20.05 + 0.5 * k for k in range(1, 99)]
    drive(progress, clock, times)
    early = [u for u in updates if u["elapsed_s"] < 20.05 + report.MIN_RATE_SPAN_S]
    assert early and all(u["eta_s"] is None for u in early)  # warming up: no estimate yet
    late = next(u for u in updates if u["chunks_done"] >= 30)
    left = 100 - late["chunks_done"]
    assert late["eta_s"] == pytest.approx(left / 2.0, rel=0.05)           # the steady rate
    naive = late["elapsed_s"] / late["chunks_done"] * left                 # warm-up counted
    assert naive > 1.5 * late["eta_s"], "the test must tell the two estimates apart"
    assert late["samples_per_s"] == pytest.approx(16.0, rel=0.05)
    # every estimate after the warm-up is close to the truth, the first ones included
    for u in updates:
        if u["eta_s"] is not None and u["chunks_done"] < 100:
            truth = 20.05 + 0.5 * (99 - 1) - u["elapsed_s"]
            assert u["eta_s"] == pytest.approx(truth, rel=0.25, abs=1.0), u
    assert updates[-1]["eta_s"] == 0 and updates[-1]["percent"] == 100.0


def test_plain_lines_where_stderr_is_not_a_terminal(monkeypatch):
    """A resumed job (20 of 100 done before) piped to a log: one line at the start, then one
    per 10 % of the chunks, newline-terminated, no carriage return; none between them."""
    err, clock = io.StringIO(), Clock()
    monkeypatch.setattr("sys.stderr", err)
    progress = Progress("bar", total=100, already=20, todo=80, name="digits-x", clock=clock)
    progress.start({"threads": 1})
    drive(progress, clock, [1.0 + 0.6 * k for k in range(80)])
    text = err.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    percents = [int(m[1]) for m in parsed]
    assert percents[0] == 20 and parsed[0][2] == "20"       # starts at the chunks done before
    assert percents == sorted(percents) and percents[-1] == 100 and parsed[-1][4] == "0:00"
    assert [p // 10 for p in percents] == list(range(2, 11)), lines  # one line per 10 % step
    assert "ETA ?" in lines[0] and re.search(r"ETA \d+:\d\d$", lines[4])


def test_plain_lines_every_interval_on_a_slow_job(monkeypatch):
    err, clock = io.StringIO(), Clock()
    monkeypatch.setattr("sys.stderr", err)
    progress = Progress("bar", total=1000, already=0, todo=1000, name="digits-x", clock=clock)
    progress.start({"threads": 1})
    drive(progress, clock, [float(k + 1) for k in range(60)])  # 1 chunk/s, 60 s: under 10 %
    lines = err.getvalue().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed) and "\r" not in err.getvalue(), lines
    # the start, then one per PLAIN_INTERVAL_S (10 s: 10 chunks), the last one at 60 s
    assert [int(m[2]) for m in parsed] == [0, 10, 20, 30, 40, 50, 60], lines


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    err, clock = Terminal(), Clock()
    monkeypatch.setattr("sys.stderr", err)
    progress = Progress("bar", total=50, already=10, todo=40, name="digits-x", clock=clock)
    progress.start({"threads": 1})
    assert progress.bar is not None and progress.bar.n == 10      # resumed: starts at 10
    drive(progress, clock, [5.0 + k for k in range(40)], failed_at=7)
    frames = [f for f in err.getvalue().split("\r") if f.strip()]
    assert frames[0].startswith("taskflow digits-x:  20%|") and "10/50 chunks" in frames[0]
    last = frames[-1].strip()
    assert last.startswith("taskflow digits-x:  98%|") and "49/50 chunks" in last, last
    assert "1 failed" in last and "samples/s" in last and "ETA 0:00" in last
    assert progress.bar is None and err.getvalue().endswith("\n")  # closed, the line kept


def test_json_none_and_callables_are_unchanged(capsys):
    clock = Clock()
    progress = Progress("json", total=4, already=1, todo=3, name="digits-x", clock=clock)
    progress.start({"target": "out.zarr", "threads": 1, "name": "digits-x"})
    drive(progress, clock, [1.0, 2.0, 3.0])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == {"event": "start", "target": "out.zarr", "threads": 1,
                         "name": "digits-x"}
    assert [e["chunks_done"] for e in events[1:]] == [2, 3, 4]
    assert {"event", "chunks_done", "chunks_total", "failed", "samples", "samples_per_s",
            "eta_s", "elapsed_s", "percent", "name"} <= set(events[-1])
    assert events[-1]["eta_s"] == 0 and events[-1]["percent"] == 100.0

    quiet = Progress("none", total=4, already=0, todo=4, clock=clock)
    quiet.start({"threads": 1})
    drive(quiet, clock, [4.0, 5.0, 6.0, 7.0])
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match="'bars'"):
        Progress("bars", total=1, already=0, todo=1)


def test_job_names():
    when = time.mktime((2026, 12, 5, 22, 14, 0, 0, 0, -1))
    assert job_name("/models/squeezenet1.1.onnx", when) == "squeezenet1.1-20261205-2214"
    assert job_name("s3://bucket/models/resnet50.onnx", when) == "resnet50-20261205-2214"
    pipeline = SimpleNamespace(name="ensemble", graph=SimpleNamespace(name="ignored"))
    assert job_name(pipeline, when) == "ensemble-20261205-2214"
    assert job_name(SimpleNamespace(graph=SimpleNamespace(name="main graph")), when) == \
        "main-graph-20261205-2214"
    assert job_name(SimpleNamespace(name=None, graph=SimpleNamespace(name="")), when) == \
        "job-20261205-2214"
    assert re.fullmatch(r"digits-\d{8}-\d{4}", job_name("digits.onnx"))
    summary = JobSummary("out.zarr", 2, 2, 0, samples=16, seconds=1.0, name="digits-x")
    assert str(summary).startswith("taskflow run digits-x: 16 samples in 2 chunks")
    assert summary.to_dict()["name"] == "digits-x"
    assert str(JobSummary("out.zarr", 2, 2, 0, 16, 1.0)).startswith("taskflow run: 16 samples")
