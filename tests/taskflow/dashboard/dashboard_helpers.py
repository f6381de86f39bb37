"""Helpers for the dashboard tests: a stand-in job that emits real telemetry, and HTTP reads.

``FakeJob`` submits small tasks (``fake_chunk``) that sleep, then call
``telemetry.emit_chunk`` on their worker, while a thread on the client drives the job like
``infer_zarr`` will: it counts finished and failed chunks and calls ``telemetry.emit_job``
after each. The integrator can swap this for a real ``infer_zarr`` job.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from distributed import Client, as_completed

from taskflow.dashboard import telemetry

#: Seconds of fake compute per chunk, split over layers as in LAYER_SHARE.
CHUNK_S = 0.05
SAMPLES = 8
LAYER_SHARE = {"conv1": 0.6, "relu1": 0.1, "fc": 0.3}


def fake_chunk(job: str, i: int, seconds: float = CHUNK_S, fail: bool = False) -> int:
    """One chunk: sleeps ``seconds``, reports it (or raises, to be quarantined)."""
    time.sleep(seconds)
    if fail:
        raise RuntimeError(f"chunk {i} of {job} is broken (on purpose)")
    layers = {name: share * seconds for name, share in LAYER_SHARE.items()}
    telemetry.emit_chunk(job, i, SAMPLES, seconds, layers)
    return SAMPLES


class FakeJob:
    """Run ``chunks`` fake chunks on ``client`` from a thread; ``last`` is the last emit_job.

    ``name`` is the job's id; ``title``, when given, the name it sends (``infer_zarr``'s
    ``name``)."""

    def __init__(self, client: Client, name: str, chunks: int, *, seconds: float = CHUNK_S,
                 broken: frozenset[int] = frozenset(), title: str | None = None):
        self.client, self.name, self.chunks, self.title = client, name, chunks, title
        self.seconds, self.broken = seconds, broken
        self.last: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.stopping = threading.Event()  # set: cancel what is left, report "interrupted"
        self.thread = threading.Thread(target=self._run, name=f"fake-job-{name}", daemon=True)

    def start(self) -> FakeJob:
        self.thread.start()
        return self

    def _emit(self, **counts: Any) -> None:
        self.last = dict(job=self.name, total=self.chunks, started=self.started,
                         name=self.title or self.name, **counts)
        telemetry.emit_job(self.name, total=self.chunks, started=self.started,
                           client=self.client, name=self.title, **counts)

    def _run(self) -> None:
        try:
            self.started = time.time()
            n = range(self.chunks)
            futures = self.client.map(fake_chunk, [self.name] * self.chunks, n,
                                      [self.seconds] * self.chunks, [i in self.broken for i in n],
                                      key=[f"tf-fake-{self.name}-{i}" for i in n])
            done = quarantined = 0
            self._emit(done=0, failed=0, quarantined=0, in_flight=self.chunks, state="running")
            for future in as_completed(futures):
                if future.status == "error":
                    quarantined += 1
                else:
                    done += 1
                in_flight = self.chunks - done - quarantined
                if in_flight and self.stopping.is_set():
                    self.client.cancel([f for f in futures if not f.done()])
                    self._emit(done=done, failed=0, quarantined=quarantined, in_flight=0,
                               state="interrupted")
                    return
                self._emit(done=done, failed=0, quarantined=quarantined, in_flight=in_flight,
                           state="running" if in_flight else "done")
        except BaseException as exc:  # reported by join()
            self.error = exc

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        return self.join()

    def join(self, timeout: float = 60) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"job {self.name} still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.last


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, ConnectionError):  # not listening (yet)
        return 0, b""


def get_json(url: str) -> dict[str, Any]:
    status, body = get(url)
    assert status == 200, f"{url}: HTTP {status}"
    return json.loads(body)


def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate()`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def page_url(cluster: Any) -> str:
    """``http://127.0.0.1:PORT/taskflow`` from a Cluster's dashboard link."""
    return cluster.dashboard_link.rsplit("/", 1)[0] + "/taskflow"
